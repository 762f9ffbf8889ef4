"""`ray-rlhf demo`: the toy world end to end on this machine.

Today: SFT of the tiny policy on the toy world's (deliberately noisy) SFT split as a Ray
Train + DeepSpeed run, then held-out evaluation of the untrained and the SFT policy with
vLLM. Later stages (PPO, reward models) join here as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray_rlhf.config import RLHFConfig
from ray_rlhf.loops.common import mark_done, prepare_run_dir, toyworld_files

_SHOWN = ("true_reward", "exact_match", "style_rate")


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


def run(cfg: RLHFConfig) -> dict[str, dict[str, float]]:
    """Run the demo; returns the evaluation metrics per policy ("initial", "sft")."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops import sft
    from ray_rlhf.loops.evaluate import evaluate_policy

    start = time.perf_counter()
    run_dir = prepare_run_dir(cfg)
    prompts = _test_prompts(cfg, run_dir)
    started = init_ray(cfg.resources)
    try:
        result = sft.run(cfg, run_dir)
    finally:
        shutdown_ray(started)
    t_eval = time.perf_counter()
    evals = {
        "initial": evaluate_policy(result.base_dir, prompts, cfg, seed=cfg.run.seed),
        "sft": evaluate_policy(result.policy_dir, prompts, cfg, seed=cfg.run.seed),
    }
    seconds = {
        "sft": result.seconds,
        "eval": time.perf_counter() - t_eval,
        "total": time.perf_counter() - start,
    }
    report = format_report(evals, seconds)
    (run_dir / "report.md").write_text(report)
    (run_dir / "eval.json").write_text(json.dumps(evals, indent=2))
    print(report, flush=True)
    mark_done(run_dir, {"eval": evals, "seconds": seconds})
    return evals
