"""Evidence for segment-level rewards on the toy world (Yin et al. 2025; ALGORITHMS.md §5).

Per seed: one SFT policy (shared by the arms), then three reward models from the same
preference pairs and PPO from the SFT policy with each, all at the same iteration budget:

    bandit   scalar RM, score on the last token          (rm.head scalar)
    segment  per-position RM, entropy segments at c      (segment.threshold from the config)
    token    per-position RM, c = 0 (one token a segment)

The yardstick is the toy world's ground truth on held-out test prompts
(`eval/sampled/true_reward`, plus the SFT policy itself as iteration 0). Also measured:
Spearman correlation of each per-position RM's segment rewards with the true per-step
correctness, on responses sampled from the SFT policy. Finished arms are kept
(`result.json`), so a stopped job resumes where it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from ray_rlhf.config import RLHFConfig, requested_cpus

ARMS = {"bandit": "scalar", "segment": "per_position", "token": "per_position"}
"""Arm (= `segment.reward_granularity`) -> `rm.head`."""

SEEDS = (0, 1, 2)
"""Seeds of the evidence run (`run.seed` and the tiny model's initialization)."""

CORRELATION_PROMPTS = 96
"""Test prompts sampled (2 responses each) for the step-correctness correlation and the
rendered segment reports."""

METRIC = "eval/sampled/true_reward"
"""The held-out yardstick."""


def arm_config(cfg: RLHFConfig, seed: int, arm: str, rm_dir: Path | None = None) -> RLHFConfig:
    """`cfg` for one seed and arm (the reward model path once it is trained)."""
    r = dataclasses.replace
    reward = cfg.reward if rm_dir is None else r(cfg.reward, kind="model", model_path=str(rm_dir))
    return r(
        cfg,
        run=r(cfg.run, seed=seed),
        model=r(cfg.model, tiny=r(cfg.model.tiny, seed=seed)),
        rm=r(cfg.rm, head=ARMS[arm]),
        segment=r(cfg.segment, reward_granularity=arm),
        reward=reward,
    )


def _sft_policy(cfg: RLHFConfig, seed_dir: Path) -> Path:
    from ray_rlhf.loops import sft

    marker = seed_dir / "sft.json"
    if marker.is_file():
        return Path(json.loads(marker.read_text())["policy_dir"])
    result = sft.run(cfg, seed_dir)
    marker.write_text(json.dumps({"policy_dir": str(result.policy_dir)}))
    return result.policy_dir


def _test_prompts(cfg: RLHFConfig, run_dir: Path) -> list[str]:
    from ray_rlhf.data.prompts import load_prompts
    from ray_rlhf.loops.common import toyworld_files

    return list(load_prompts(str(toyworld_files(cfg, run_dir)["test_prompts"]))["prompt"])


def _diagnostics(cfg: RLHFConfig, arm_dir: Path, policy: Path, name: str) -> dict[str, float]:
    """Segment report of `policy` under the arm's RM; returns the step correlation."""
    from ray_rlhf.loops.segment_report import (
        format_segment_report,
        sample_rollouts,
        segment_sample,
        step_correlation,
    )
    from ray_rlhf.models.builders import load_tokenizer

    prompts = _test_prompts(cfg, arm_dir)[:CORRELATION_PROMPTS]
    batch = sample_rollouts(policy, prompts, 2, cfg.data.max_response_tokens, cfg.run.seed)
    sample = segment_sample(cfg, batch)
    stats = step_correlation(sample)
    text = format_segment_report(sample, load_tokenizer(policy))
    (arm_dir / f"segments_{name}.md").write_text(
        f"# Segments of the {name} policy under the {arm_dir.name} RM\n\n"
        f"Spearman(segment reward, true step correctness) = "
        f"{stats['segment/step_spearman']:.3f} over {stats['segment/step_pairs']:.0f} "
        f"segments.\n\n{text}"
    )
    return stats


def run_arm(cfg: RLHFConfig, seed: int, arm: str, seed_dir: Path, policy: Path) -> dict[str, Any]:
    """RM + PPO of one arm; returns its curve and summary (cached in `result.json`)."""
    from ray_rlhf.loops import ppo, rm
    from ray_rlhf.metrics import read_metrics

    arm_dir = seed_dir / arm
    done = arm_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(arm_dir, ignore_errors=True)  # a half-finished arm restarts from scratch
    arm_dir.mkdir(parents=True)
    start = time.perf_counter()
    rm_result = rm.run(arm_config(cfg, seed, arm), arm_dir, policy)
    arm_cfg = arm_config(cfg, seed, arm, rm_result.reward_model_dir)
    out: dict[str, Any] = {"seed": seed, "arm": arm, "rm_accuracy": rm_result.eval_accuracy}
    if arm != "bandit":
        out |= _diagnostics(arm_cfg, arm_dir, policy, "sft")
    ppo.run(arm_cfg, arm_dir, policy)
    rows = read_metrics(arm_dir / "ppo")
    out["curve"] = [[r["step"], r[METRIC]] for r in rows if METRIC in r]
    out["rollout_curve"] = [[r["step"], r["rollout/true_reward"]] for r in rows]
    out["final"] = out["curve"][-1][1]
    out["final_greedy"] = [r for r in rows if "eval/greedy/true_reward" in r][-1][
        "eval/greedy/true_reward"
    ]
    if arm != "bandit":
        out["segments_per_response"] = rows[-1]["reward/segments_per_response"]
        _diagnostics(arm_cfg, arm_dir, arm_dir / "ppo_policy", "ppo")
    out["seconds"] = time.perf_counter() - start
    done.write_text(json.dumps(out, indent=2))
    return out


def run_seed(cfg: RLHFConfig, seed: int, out_dir: Path) -> list[dict[str, Any]]:
    """SFT, then every arm, for one seed; the SFT policy's held-out reward is iteration 0."""
    from ray_rlhf.loops.evaluate import evaluate_policy

    seed_dir = out_dir / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    base = arm_config(cfg, seed, "bandit")
    policy = _sft_policy(base, seed_dir)
    sft_eval = seed_dir / "sft_eval.json"
    if not sft_eval.is_file():
        metrics = evaluate_policy(policy, _test_prompts(base, seed_dir), base, seed=seed)
        sft_eval.write_text(json.dumps(metrics, indent=2))
    start = json.loads(sft_eval.read_text())[METRIC]
    results = []
    for arm in ARMS:
        result = run_arm(cfg, seed, arm, seed_dir, policy)
        results.append(result | {"sft": start})
        print(f"[evidence] seed {seed} {arm}: final {result['final']:.3f}", flush=True)
    return results


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def format_tables(results: list[dict[str, Any]], cfg: RLHFConfig) -> str:
    """Markdown: summary (mean ± std over seeds), per-seed values, correlations."""
    seeds = sorted({r["seed"] for r in results})
    by_arm = {arm: [r for r in results if r["arm"] == arm] for arm in ARMS}
    lines = [
        f"Held-out true reward (`{METRIC}`, {cfg.data.toyworld.n_test_prompts} test prompts x "
        f"{cfg.rollout.n_samples} samples) after {cfg.ppo.iterations} PPO iterations; "
        f"mean ± sample std over seeds {seeds}.",
        "",
        "| arm | SFT start | final sampled | final greedy | RM accuracy | segments / response |",
        "|---|---|---|---|---|---|",
    ]
    for arm, rs in by_arm.items():
        seg = _mean_std([r["segments_per_response"] for r in rs]) if arm != "bandit" else "1"
        lines.append(
            f"| {arm} | {_mean_std([r['sft'] for r in rs])} | {_mean_std([r['final'] for r in rs])}"
            f" | {_mean_std([r['final_greedy'] for r in rs])} | "
            f"{_mean_std([r['rm_accuracy'] for r in rs])} | {seg} |"
        )
    lines += [
        "",
        "Per seed (final sampled true reward):",
        "",
        "| seed | " + " | ".join(ARMS) + " |",
    ]
    lines.append("|---" * (len(ARMS) + 1) + "|")
    for seed in seeds:
        cells = [f"{r['final']:.3f}" for arm in ARMS for r in by_arm[arm] if r["seed"] == seed]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Spearman correlation between the RM's raw segment rewards and the mean true step "
        f"correctness of the segment, on {CORRELATION_PROMPTS} x 2 responses sampled from "
        "the SFT policy:",
        "",
        "| arm | Spearman rho | segments |",
        "|---|---|---|",
    ]
    for arm in ("segment", "token"):
        rs = by_arm[arm]
        pairs = statistics.mean(r["segment/step_pairs"] for r in rs)
        lines.append(
            f"| {arm} | {_mean_std([r['segment/step_spearman'] for r in rs])} | {pairs:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], out_png: Path) -> None:
    """Held-out true reward against PPO iteration: mean over seeds with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        rs = [r for r in results if r["arm"] == arm]
        steps = [0] + [s for s, _ in rs[0]["curve"]]
        ys = np.array([[r["sft"]] + [v for _, v in r["curve"]] for r in rs])
        mean, std = ys.mean(axis=0), ys.std(axis=0)
        ax.plot(steps, mean, marker="o", label=f"{arm} (n={len(rs)})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("held-out true reward (sampled)")
    ax.set_title("Toy world: bandit vs segment vs token rewards")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def run(cfg: RLHFConfig, seeds: tuple[int, ...] = SEEDS, docs: Path | None = None) -> str:
    """The whole evidence job into `cfg.run.run_dir`; returns the report (also copied with
    its PNG into `docs` when given)."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.preflight import preflight

    out_dir = cfg.run.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = preflight(cfg, out_dir, ("sft", "rm"))  # toy data checks; resolves the token limits
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        for seed in seeds:
            results += run_seed(cfg, seed, out_dir)
    finally:
        shutdown_ray(started)
    plot(results, out_dir / "segments_curves.png")
    report = (
        "# Segment-level rewards on the toy world\n\n"
        + format_tables(results, cfg)
        + f"\n![held-out true reward](segments_curves.png)\n\nWall time "
        f"{time.perf_counter() - start:.0f} s (this invocation).\n"
    )
    (out_dir / "report.md").write_text(report)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(out_dir / "segments_curves.png", docs / "segments_curves.png")
        (docs / "segments.md").write_text(report)
    print(report, flush=True)
    return report
