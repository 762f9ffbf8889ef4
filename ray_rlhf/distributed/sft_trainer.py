"""SFT as a Ray Train run: `TorchTrainer` workers each drive one `SFTLearner` (DeepSpeed).

Ray Train owns the process group (gloo on CPU, NCCL on GPU), restarts the worker group from
the last reported checkpoint (FailureConfig), and records metrics with each report. The data
position is the step number (see `global_batch_indices`), so a restart replays nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch

from ray_rlhf.config import RLHFConfig
from ray_rlhf.data.sampler import global_batch_indices
from ray_rlhf.distributed.checkpointing import (
    STORAGE_KEY,
    copy_final_policy,
    report_checkpoint,
    restore_step,
)
from ray_rlhf.distributed.trainer import fit_learners, mean_over_ranks, setup_worker
from ray_rlhf.metrics import MetricsWriter
from ray_rlhf.progress import Row, StageProgress, metrics_postfix


def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows `idx`, trimmed to the longest sequence in them (right padding)."""
    rows = {k: v[idx] for k, v in data.items()}
    width = int(rows["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in rows.items()}


def _report(learner: Any, metrics: dict[str, float], step: int, *, save: bool, final: bool):
    """Report metrics; with `save`, a resumable checkpoint; with `final`, also the HF dir."""
    if not save:
        ray.train.report(metrics)
        return
    weights = learner.state_dict() if final else None  # collective under ZeRO-3
    meta = {"stage": "sft", "step": step}
    report_checkpoint(learner, metrics, {"step": step}, final_weights=weights, metadata=meta)


def sft_train_loop(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker."""
    from ray_rlhf.learner.sft import SFTLearner

    cfg: RLHFConfig = config["cfg"]
    rank, world = setup_worker(cfg)
    data = ray.get(config["data_ref"])
    n = data["input_ids"].shape[0]
    learner = SFTLearner(
        config["model_dir"],
        cfg.model,
        cfg.learner,
        cfg.sft,
        micro_batch_per_worker=cfg.sft.batch_size // world,
    )
    start = restore_step(learner, "sft", config.get(STORAGE_KEY))
    writer = MetricsWriter(config["metrics_dir"], resume_step=start) if rank == 0 else None
    window: list[dict[str, float]] = []
    tick = time.perf_counter()
    for step in range(start, cfg.sft.steps):
        idx = global_batch_indices(n, cfg.sft.batch_size, step, cfg.run.seed)[rank::world]
        window.append(learner.train_step(_batch(data, idx)))
        done = step + 1
        if done % cfg.sft.log_every and done != cfg.sft.steps:
            continue
        metrics = mean_over_ranks({k: sum(m[k] for m in window) / len(window) for k in window[0]})
        elapsed, tick = time.perf_counter() - tick, time.perf_counter()
        metrics["perf/steps_per_s"] = len(window) / elapsed
        metrics["perf/tokens_per_s"] = metrics["train/tokens"] * world * len(window) / elapsed
        metrics["train/step"] = done
        window = []
        if writer is not None:
            writer.log(done, metrics)  # the driver's progress bar reads these rows
        every, final = cfg.sft.checkpoint_every, done == cfg.sft.steps
        save = final or (every > 0 and done % every == 0)
        _report(learner, metrics, done, save=save, final=final)
    if writer is not None:
        writer.close()


def run_sft_trainer(
    cfg: RLHFConfig, *, model_dir: Path, data: dict[str, torch.Tensor], run_dir: Path
) -> Path:
    """Train on tokenized `data` and write the final policy to `run_dir/policy`.

    Args:
        data: input_ids (N, T) long, attention_mask (N, T) bool, response_mask (N, T) bool.

    Returns:
        The HF policy directory (loadable by transformers and vLLM).
    """
    loop_config = {
        "cfg": cfg,
        # Absolute: Ray Train workers run in their own working directory.
        "model_dir": str(Path(model_dir).resolve()),
        "data_ref": ray.put(data),
        "metrics_dir": str((run_dir / "sft").resolve()),
    }
    progress = StageProgress("sft", cfg.sft.steps, "step", _postfix, stride=cfg.sft.log_every)
    result = fit_learners(
        cfg, sft_train_loop, loop_config, run_dir=run_dir, name="sft", progress=progress
    )
    return copy_final_policy(result, run_dir / "policy")


def _postfix(row: Row) -> str:
    """The SFT bar's metrics."""
    fields = [("loss", "train/loss", ".3f"), ("lr", "train/lr", ".1e")]
    return metrics_postfix(row, fields)
