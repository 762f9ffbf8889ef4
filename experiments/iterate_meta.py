"""Iterative RLHF with MetaRM vs plain RM updates, on the testbed, over seeds.

`python -m experiments.iterate_meta [--config FILE] [--publish DIR] [section.key=value ...]`

Settings: `experiments/configs/iterate_meta.yaml` (its `testbed` sections underneath). For
every seed, both arms start from the testbed's SFT policy and proxy RM of that seed (the
shared stages of `experiments.run`) and run `ray-rlhf iterate` (`ray_rlhf.loops.iterate`)
in `runs/experiments/iterate_meta/seed<s>/<arm>/`; a finished run is kept, so rerunning
resumes. The report gives per arm and round, mean ± std over seeds:

- the RM's accuracy against the truth on the round's samples of the current policy, before
  (RM_{r-1}) and after (RM_r) the round's update: pairs of one prompt's responses with
  different truth (the paper's claim: MetaRM keeps discriminating as the policy moves);
- the RM's accuracy on the toy world's held-out preference pairs;
- the true reward of the round's samples, and PPO's held-out sampled true reward, KL to
  the round's start policy and `!` rate at the round's end (round 0: the SFT policy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from experiments.protocol import Experiment, arm_config, load_experiment, run_pending
from experiments.report import mean_std

CONFIGS = Path(__file__).resolve().parent / "configs"
NAME = "iterate_meta"
TRUE = "eval/sampled/true_reward"
STYLE = "eval/sampled/style_rate"
KL = "eval/sampled/kl_to_ref"

log = logging.getLogger(__name__)


def run_arm(exp: Experiment, stages: Any, arm: str, seed: int) -> Path:
    """`iterate` of one (arm, seed) from the seed's SFT policy and proxy RM; its run dir."""
    from ray_rlhf.loops import iterate

    out = exp.run_dir / f"seed{seed}" / arm
    if (out / "DONE.json").exists():
        return out
    plain = arm_config(exp.base, [], seed)  # the stages are the testbed's, for both arms
    policy = stages.sft_policy(plain)
    reward_model = stages.reward_model(plain, policy)
    cfg = arm_config(exp.base, exp.arms[arm], seed)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=str(policy)),
        reward=dataclasses.replace(cfg.reward, model_path=str(reward_model)),
        run=dataclasses.replace(cfg.run, output_dir=str(out.parent), name=arm),
    )
    log.info("arm %s seed %d: iterate -> %s", arm, seed, out)
    iterate.run_job(cfg)
    return out


def _done(path: Path) -> dict[str, Any]:
    return json.loads((path / "DONE.json").read_text())


def seed_rounds(run_dir: Path, rounds: int) -> list[dict[str, float | None]]:
    """One finished iterate run: round 0 (the SFT policy's held-out evaluation before the
    first PPO update) and per round r the RM and PPO numbers the report tabulates."""
    from ray_rlhf.metrics import read_metrics

    first = [row for row in read_metrics(run_dir / "round_1" / "ppo" / "ppo") if TRUE in row]
    out: list[dict[str, float | None]] = [
        {"round": 0, "ppo_true": first[0][TRUE], "ppo_style": first[0].get(STYLE), "ppo_kl": 0.0}
    ]
    for r in range(1, rounds + 1):
        base = run_dir / f"round_{r}"
        samples, rm = _done(base / "samples"), _done(base / "rm")
        evals = [row for row in read_metrics(base / "ppo" / "ppo") if TRUE in row]
        out.append({
            "round": r,
            "samples_true": samples["true_reward"],
            "acc_before": rm["sample_accuracy_before"],
            "acc_after": rm["sample_accuracy"],
            "acc_heldout_pairs": rm["eval_accuracy"],
            "ppo_true": evals[-1][TRUE],
            "ppo_style": evals[-1].get(STYLE),
            "ppo_kl": evals[-1].get(KL),
        })
    return out


COLUMNS = (
    ("samples_true", "samples true reward"),
    ("acc_before", "RM_r-1 acc on samples"),
    ("acc_after", "RM_r acc on samples"),
    ("acc_heldout_pairs", "RM_r acc held-out pairs"),
    ("ppo_true", "held-out true reward after PPO"),
    ("ppo_kl", "KL to π_r-1"),
    ("ppo_style", "`!` rate"),
)


def collect(exp: Experiment) -> dict[str, Any]:
    """Arm -> field -> per round -> the list over finished seeds (and the seeds)."""
    rounds = exp.base.iterate.rounds
    data: dict[str, Any] = {"experiment": NAME, "config_sha256": exp.config_sha256,
                            "testbed_sha256": exp.testbed_sha256, "rounds": rounds, "arms": {}}
    for arm in exp.arms:
        seeds, per_seed = [], []
        for seed in exp.settings.seeds:
            run_dir = exp.run_dir / f"seed{seed}" / arm
            if (run_dir / "DONE.json").exists():
                seeds.append(seed)
                per_seed.append(seed_rounds(run_dir, rounds))
        data["arms"][arm] = {"seeds": seeds, "per_seed": per_seed}
    return data


def format_report(exp: Experiment, data: dict[str, Any]) -> str:
    """Markdown: the per-round table (mean ± std over seeds) and the per-seed rows."""
    lines = [f"# {exp.settings.title}", "",
             f"Config: `{exp.config_file}`, sha256 `{exp.config_sha256}`; on the testbed "
             f"`experiments/configs/{exp.settings.testbed}.yaml`, sha256 "
             f"`{exp.testbed_sha256}`.", f"Seeds {list(exp.settings.seeds)}.", ""]
    head = ["arm", "round", "seeds", *(label for _, label in COLUMNS)]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, entry in data["arms"].items():
        for r in range(data["rounds"] + 1):
            cells = [arm, str(r), str(len(entry["seeds"]))]
            for key, _ in COLUMNS:
                values = [rows[r].get(key) for rows in entry["per_seed"]]
                cells.append("—" if all(v is None for v in values) else mean_std(values))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per seed (held-out true reward after each round's PPO, round 0 = SFT; "
              "RM_r accuracy on the round's samples):", "",
              "| arm | seed | true reward r0 → rR | RM_r acc on samples r1 → rR |",
              "|---|---|---|---|"]
    for arm, entry in data["arms"].items():
        for seed, rows in zip(entry["seeds"], entry["per_seed"], strict=True):
            true = " → ".join(f"{row['ppo_true']:.3f}" for row in rows)
            acc = " → ".join(f"{row['acc_after']:.3f}" for row in rows[1:])
            lines.append(f"| {arm} | {seed} | {true} | {acc} |")
    lines += ["", "![per round](iterate_meta.png)", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], out_png: Path) -> Path:
    """Two panels over rounds, mean ± std per arm: held-out true reward, and RM_r's
    accuracy on the round's policy samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, entry in data["arms"].items():
        for ax, key, start in ((axes[0], "ppo_true", 0), (axes[1], "acc_after", 1)):
            values = np.array([[row[key] for row in rows[start:]] for rows in entry["per_seed"]],
                              dtype=float)
            if values.size == 0:
                continue
            x = np.arange(start, start + values.shape[1])
            mean, std = values.mean(0), values.std(0)
            ax.plot(x, mean, marker="o", label=arm)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    axes[0].set(xlabel="round (0 = SFT)", ylabel="held-out true reward (sampled)")
    axes[1].set(xlabel="round", ylabel="RM_r accuracy on π_r-1 samples")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def write_report(exp: Experiment) -> str:
    """report.md, iterate_meta.json and iterate_meta.png in the experiment's run dir."""
    data = collect(exp)
    (exp.run_dir / f"{NAME}.json").write_text(json.dumps(data, indent=1))
    plot(data, exp.run_dir / f"{NAME}.png")
    text = format_report(exp, data)
    (exp.run_dir / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIGS / f"{NAME}.yaml"))
    parser.add_argument("--publish", metavar="DIR",
                        help=f"also copy the report, JSON and plot to DIR as {NAME}.md / .json "
                        f"/ .png (DIR/{NAME}_notes.md appended when it exists)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    exp = load_experiment(NAME, args.config, args.overrides)
    if exp.base.iterate is None:
        parser.error(f"{args.config}: needs an `iterate` section")
    run_pending(exp, run_arm)
    text = write_report(exp)
    print(text, flush=True)
    if args.publish:
        from experiments.run import publish

        publish(NAME, exp.run_dir, Path(args.publish), plot=f"{NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
