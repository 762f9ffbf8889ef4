"""`ray-rlhf demo`: the toy world end to end on this machine.

SFT of the tiny policy on the toy world's (deliberately noisy) SFT split, then PPO with the
toy world's ground-truth rule reward (vLLM rollout actors, reward actors, DeepSpeed learners
under Ray Train), then held-out evaluation of the initial, SFT and PPO policies with vLLM.
Writes `report.md`, `curves.png`, `eval.json` into the run dir; the console gets the
header, one progress bar per stage, the report's tables and where everything is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray_rlhf.config import RLHFConfig, requested_cpus
from ray_rlhf.logs import console_print
from ray_rlhf.loops.common import mark_done, prepare_run_dir, toyworld_files
from ray_rlhf.progress import Row, StageBar, StageProgress

_SHOWN = ("true_reward", "exact_match", "style_rate")
_CURVES = ["rollout/true_reward", "eval/sampled/true_reward", "train/kl", "timing/iteration"]


def _test_prompts(cfg: RLHFConfig, run_dir: Path) -> list[str]:
    from ray_rlhf.data.prompts import load_prompts

    source = cfg.data.eval_prompts_path or toyworld_files(cfg, run_dir)["test_prompts"]
    return list(load_prompts(str(source))["prompt"])


def format_report(evals: dict[str, dict[str, float]], seconds: dict[str, float]) -> str:
    """Markdown table: one row per policy, greedy and sampled columns."""
    head = "| policy | " + " | ".join(f"{m} {k}" for m in ("greedy", "sampled") for k in _SHOWN)
    lines = [head + " |", "|---" * (1 + 2 * len(_SHOWN)) + "|"]
    for name, metrics in evals.items():
        cells = [f"{metrics[f'eval/{m}/{k}']:.3f}" for m in ("greedy", "sampled") for k in _SHOWN]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return "\n".join(["# ray_rlhf demo", "", *lines, "", f"Wall time: {timing}.", ""])


def _phase_split(run_dir: Path) -> str:
    from ray_rlhf.metrics import read_metrics

    rows = read_metrics(run_dir / "ppo")
    keys = ["timing/generate", "timing/score", "timing/train", "timing/sync", "timing/iteration"]
    if not rows:
        return ""
    med = {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in keys if k in rows[0]}
    cells = " | ".join(f"{v:.2f}" for v in med.values())
    return (
        "\nMedian seconds per PPO iteration:\n\n| "
        + " | ".join(med)
        + " |\n"
        + "|---" * len(med)
        + "|\n| "
        + cells
        + " |\n"
    )


def run(cfg: RLHFConfig) -> dict[str, dict[str, float]]:
    """Run the demo; returns the evaluation metrics per policy."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops import ppo, sft
    from ray_rlhf.loops.evaluate import evaluate_policy
    from ray_rlhf.loops.preflight import preflight
    from ray_rlhf.metrics import read_metrics
    from ray_rlhf.report import plot_curves

    start = time.perf_counter()
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("sft", "ppo"))
    prompts = _test_prompts(cfg, run_dir)
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        sft_result = sft.run(cfg, run_dir)
        ppo_result = ppo.run(cfg, run_dir, sft_result.policy_dir)
    finally:
        shutdown_ray(started)
    t_eval = time.perf_counter()
    policies = {
        "initial": sft_result.base_dir,
        "sft": sft_result.policy_dir,
        "ppo": ppo_result.policy_dir,
    }
    evals: dict[str, dict[str, float]] = {}
    with StageBar(StageProgress("eval", len(policies), "policy", _eval_postfix)) as bar:
        for done, (name, policy_dir) in enumerate(policies.items(), start=1):
            evals[name] = evaluate_policy(policy_dir, prompts, cfg, seed=cfg.run.seed)
            bar.show(done, {"policy": name, **evals[name]})
    seconds = {
        "sft": sft_result.seconds,
        "ppo": ppo_result.seconds,
        "eval": time.perf_counter() - t_eval,
        "total": time.perf_counter() - start,
    }
    plot_curves(read_metrics(run_dir / "ppo"), _CURVES, run_dir / "curves.png", title="PPO")
    report = format_report(evals, seconds) + _phase_split(run_dir)
    (run_dir / "report.md").write_text(report + "\n![PPO curves](curves.png)\n")
    (run_dir / "eval.json").write_text(json.dumps(evals, indent=2))
    mark_done(run_dir, {"eval": evals, "seconds": seconds})
    console_print(report + _written(run_dir))
    return evals


def _eval_postfix(row: Row) -> str:
    """The eval bar's note on the policy just evaluated."""
    return f"{row['policy']}: greedy true reward {row['eval/greedy/true_reward']:.3f}"


def _written(run_dir: Path) -> str:
    """Where the demo's outputs are, for the console."""
    return (
        f"\nWritten to {run_dir}/: report.md, curves.png, eval.json, config.yaml,\n"
        "  policy/ (SFT) and ppo_policy/ (PPO) HF dirs, sft/ and ppo/ (metrics.jsonl, "
        "TensorBoard),\n  logs/ (driver.log: this process, with vLLM and transformers; ray/: "
        "Ray Train workers, rollout and reward actors)."
    )


run_job = run
"""`ray-rlhf demo`: every command's loop module has a `run_job(cfg)`."""
