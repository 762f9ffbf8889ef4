"""Evidence for contrastive rewards (ALGORITHMS.md §2) on the toy world.

For every seed, in one run dir `<output_dir>/<name>/seed<s>/`:

    SFT policy (`sft.run`) ──┐
    reward model (`rm.run`, the toy's biased preference pairs: the annotator likes `!`)
                             ├─► offline baselines (`baselines.run`, k samples of the SFT
                             │   policy per prompt, scored by that RM)
                             ├─► PPO arm `raw`:         reward = RM score
                             └─► PPO arm `contrastive`: reward = RM score - baseline

The SFT policy, the RM and the PPO seed are shared by the two arms of a seed, so the arms
differ only in the reward. Measured per arm, from each PPO run's metrics.jsonl:
held-out true reward (`eval/sampled/true_reward`, sampled on the toy's test prompts), the
within-prompt variance of sequence advantages (`train/adv_var_within_prompt`), and the
reward-hacking gap `reward/raw - rollout/true_reward` (RM score minus true reward of the
same rollouts). Output: `report.md` (mean ± std over seeds, and per seed) and
`contrastive.png` in the run dir. Finished stages are skipped on a rerun.

Settings come from one committed YAML (`jobs/configs/contrastive_evidence.yaml`): an
`evidence:` section (`EvidenceConfig`) plus the usual `RLHFConfig` sections shared by every
stage and arm.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_rlhf.config import RLHFConfig, dump_config
from ray_rlhf.typed_config import build, check, merge, parse_override, set_dotted

ARMS = ("raw", "contrastive")


@dataclass(frozen=True)
class EvidenceConfig:
    """What the evidence job repeats and how it summarizes."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds: each trains its own SFT policy and RM and runs both PPO arms (run.seed)."""
    last_window: int = 5
    """Iterations averaged for the end-of-training columns (and the first-iterations ones)."""

    def __post_init__(self) -> None:
        check(len(self.seeds) > 0, "seeds", "give at least one seed")
        check(self.last_window >= 1, "last_window", "must be >= 1")


def load_evidence_config(
    path: str | Path, overrides: list[str]
) -> tuple[EvidenceConfig, RLHFConfig]:
    """The `evidence:` section and the shared `RLHFConfig` of one YAML file + overrides."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    evidence = build(EvidenceConfig, tree.pop("evidence", {}), "evidence")
    return evidence, build(RLHFConfig, merge({}, tree), "")


def _with(cfg: RLHFConfig, **sections: dict[str, Any]) -> RLHFConfig:
    """`cfg` with some fields of some sections replaced (validated again)."""
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()
    }
    return dataclasses.replace(cfg, **changes)


def run_seed(base: RLHFConfig, seed_dir: Path, seed: int) -> dict[str, Path]:
    """SFT, RM, baselines and both PPO arms of one seed; returns each arm's metrics dir."""
    from ray_rlhf.loops import baselines, ppo, rm, sft
    from ray_rlhf.loops.common import prepare_base_model

    cfg = _with(
        base, run={"seed": seed}, model={"tiny": dataclasses.replace(base.model.tiny, seed=seed)}
    )
    seed_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, seed_dir / "config.yaml")
    policy = seed_dir / "policy"
    if not (policy / "config.json").exists():
        policy = sft.run(cfg, seed_dir).policy_dir
    reward_model = seed_dir / "reward_model"
    if not (reward_model / "config.json").exists():
        reward_model = rm.run(cfg, seed_dir, prepare_base_model(cfg, seed_dir)).reward_model_dir
    scored = _with(
        cfg,
        model={"path": str(policy)},
        reward={"kind": "model", "model_path": str(reward_model)},
    )
    baseline_file = seed_dir / "baselines.parquet"
    if not baseline_file.exists():
        baseline_file = baselines.run(scored, seed_dir, policy).path
    out = {}
    for arm in ARMS:
        arm_dir = seed_dir / arm
        arm_cfg = _with(
            scored,
            contrastive={"enabled": arm == "contrastive", "baselines_path": str(baseline_file)},
        )
        if not (arm_dir / "ppo_policy" / "config.json").exists():
            arm_dir.mkdir(exist_ok=True)
            dump_config(arm_cfg, arm_dir / "config.yaml")
            ppo.run(arm_cfg, arm_dir, policy)
        out[arm] = arm_dir / "ppo"
    return out


# --------------------------------------------------------------------------- summary


def arm_summary(rows: list[dict[str, Any]], window: int) -> dict[str, float]:
    """One PPO run's numbers: first / last `window` iterations and the final evaluation."""
    first, last = rows[:window], rows[-window:]

    def mean(key: str, part: list[dict[str, Any]]) -> float:
        return statistics.fmean(r[key] for r in part)

    def gap(part: list[dict[str, Any]]) -> float:
        return statistics.fmean(r["reward/raw"] - r["rollout/true_reward"] for r in part)

    evals = [r for r in rows if "eval/sampled/true_reward" in r]
    return {
        "eval_true_final": evals[-1]["eval/sampled/true_reward"],
        "eval_true_best": max(r["eval/sampled/true_reward"] for r in evals),
        "rollout_true_first": mean("rollout/true_reward", first),
        "rollout_true_last": mean("rollout/true_reward", last),
        "adv_var": statistics.fmean(r["train/adv_var_within_prompt"] for r in rows),
        "gap_first": gap(first),
        "gap_last": gap(last),
        "style_last": mean("rollout/style_rate", last),
    }


COLUMNS = {
    "eval_true_final": "held-out true reward (final eval)",
    "eval_true_best": "held-out true reward (best eval)",
    "rollout_true_first": "rollout true reward (first it.)",
    "rollout_true_last": "rollout true reward (last it.)",
    "adv_var": "within-prompt adv. variance (mean over it.)",
    "gap_first": "hacking gap RM − true (first it.)",
    "gap_last": "hacking gap RM − true (last it.)",
    "style_last": "`!` rate (last it.)",
}


def format_tables(per_seed: dict[int, dict[str, dict[str, float]]], window: int) -> str:
    """Markdown: mean ± std over seeds per arm, then one row per (seed, arm)."""
    head = "| arm | " + " | ".join(COLUMNS.values()) + " |"
    rule = "|---" * (1 + len(COLUMNS)) + "|"
    lines = [f"Mean ± std over seeds {sorted(per_seed)} (first / last = {window} iterations).", ""]
    lines += [head, rule]
    for arm in ARMS:
        cells = []
        for key in COLUMNS:
            values = [per_seed[s][arm][key] for s in per_seed]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {std:.3f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", "", head.replace("| arm |", "| seed | arm |"), "|---" + rule]
    for seed, arms in per_seed.items():
        for arm in ARMS:
            cells = [f"{arms[arm][key]:.3f}" for key in COLUMNS]
            lines.append(f"| {seed} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_evidence(runs: dict[int, dict[str, list[dict[str, Any]]]], out_png: Path) -> Path:
    """Three panels against PPO iteration: held-out true reward, within-prompt advantage
    variance, hacking gap; thin lines per seed, thick the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("eval/sampled/true_reward", "held-out true reward (sampled)"),
        ("train/adv_var_within_prompt", "within-prompt advantage variance"),
        ("gap", "hacking gap: RM reward − true reward"),
    ]
    colors = {"raw": "tab:red", "contrastive": "tab:blue"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arm in ARMS:
            curves = []
            for rows_by_arm in runs.values():
                rows = rows_by_arm[arm]
                if key == "gap":
                    pts = [(r["step"], r["reward/raw"] - r["rollout/true_reward"]) for r in rows]
                else:
                    pts = [(r["step"], r[key]) for r in rows if key in r]
                curves.append(pts)
                ax.plot(*zip(*pts, strict=True), color=colors[arm], alpha=0.25, linewidth=0.8)
            steps = [p[0] for p in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
            ax.plot(
                steps, mean, color=colors[arm], linewidth=2, label=arm, marker="o", markersize=2
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def run(evidence: EvidenceConfig, cfg: RLHFConfig) -> str:
    """All seeds, then the report; returns the markdown. Ray is started here."""
    from ray_rlhf.config import requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.preflight import preflight
    from ray_rlhf.metrics import read_metrics

    start = time.perf_counter()
    out_dir = cfg.run.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    cfg = preflight(cfg, out_dir, ("sft", "rm"))  # toy data checks; resolves the token limits
    (out_dir / "evidence.yaml").write_text(yaml.safe_dump(dataclasses.asdict(evidence)))
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    metrics_dirs = {}
    try:
        for seed in evidence.seeds:
            print(f"[evidence] seed {seed}", flush=True)
            metrics_dirs[seed] = run_seed(cfg, out_dir / f"seed{seed}", seed)
    finally:
        shutdown_ray(started)
    runs = {
        s: {arm: read_metrics(d) for arm, d in arms.items()} for s, arms in metrics_dirs.items()
    }
    per_seed = {
        s: {arm: arm_summary(rows, evidence.last_window) for arm, rows in arms.items()}
        for s, arms in runs.items()
    }
    plot_evidence(runs, out_dir / "contrastive.png")
    minutes = (time.perf_counter() - start) / 60
    report = (
        "# Contrastive rewards vs raw RM rewards (toy world)\n\n"
        + format_tables(per_seed, evidence.last_window)
        + f"\nWall time of this invocation: {minutes:.1f} min.\n\n![curves](contrastive.png)\n"
    )
    (out_dir / "report.md").write_text(report)
    print(report, flush=True)
    return report
