"""Bradley-Terry reward-model training as a Ray Train run: each worker drives one `RMLearner`.

Mirrors `sft_trainer`: Ray Train owns the process group and restarts from the last reported
checkpoint; the data position is the step number (`global_batch_indices`), so a restart
replays nothing. Held-out accuracy is reported as `eval/accuracy` every `rm.eval_every`
steps and at the end; the final checkpoint holds the HF reward-model dir.
"""

from __future__ import annotations

import dataclasses
import math
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

_EVAL_ROWS = 64
"""Pairs per evaluation forward (per rank)."""


def export_reward_model(
    model_dir: Path, weights: dict[str, torch.Tensor], out_dir: Path, metadata: dict[str, Any]
) -> None:
    """Write `weights` as an HF reward-model dir (token classification + `ray_rlhf_head`).

    Args:
        model_dir: The dir training started from (gives the architecture and tokenizer).
        weights: Full reward-model state dict.
        out_dir: Destination; loadable by `load_reward_model` and `RewardScorer`.
        metadata: Written to `ray_rlhf.json`; must hold `head`.
    """
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    model = load_reward_model(model_dir, head=metadata["head"])
    model.load_state_dict(weights)
    save_hf_model(model, load_tokenizer(model_dir), out_dir, metadata=metadata)


def _evaluate(
    learner: Any, data: dict[str, torch.Tensor], rank: int, world: int
) -> dict[str, float]:
    """Held-out `eval/accuracy`, `eval/score_mean` and `eval/score_std` (over both responses
    of every pair) over all of `data`, each rank scoring its shard (a collective)."""
    from ray_rlhf.learner.rm import pair_batch

    n = data["chosen_input_ids"].shape[0]
    shard = torch.arange(n)[rank::world]
    chunks = max(1, math.ceil(math.ceil(n / world) / _EVAL_ROWS))  # same count on every rank
    totals: dict[str, float] = {}
    for idx in torch.tensor_split(shard, chunks):  # non-empty: run() checks n >= world
        out = learner.evaluate(pair_batch(data, idx))
        totals = {k: totals.get(k, 0.0) + v for k, v in out.items()}
    means = mean_over_ranks(totals)  # ratios of rank means = ratios of sums
    mean = means["score_sum"] / means["responses"]
    var = max(means["score_sq_sum"] / means["responses"] - mean * mean, 0.0)
    return {
        "eval/accuracy": means["correct"] / means["pairs"],
        "eval/score_mean": mean,
        "eval/score_std": math.sqrt(var),
    }


def _metadata(
    cfg: RLHFConfig, config: dict[str, Any], metrics: dict[str, float], step: int
) -> dict[str, Any]:
    """What `ray_rlhf.json` of the exported reward model records; `normalization` holds the
    mean and std of its scores on the held-out responses (to standardize rewards)."""
    return {
        "stage": "rm",
        "step": step,
        "base_model": config["model_dir"],
        "head": cfg.rm.head,
        "training": dataclasses.asdict(cfg.rm),
        "eval_accuracy": metrics["eval/accuracy"],
        "eval_pairs": config["eval_pairs"],
        "normalization": {
            "mean": metrics["eval/score_mean"],
            "std": metrics["eval/score_std"],
            "responses": 2 * config["eval_pairs"],
        },
    }


def _report(
    learner: Any, metrics: dict[str, float], step: int, *, save: bool, meta: dict[str, Any] | None
) -> None:
    """Report metrics; with `save`, a resumable checkpoint; with `meta`, also the HF dir."""
    if not save:
        ray.train.report(metrics)
        return
    weights = learner.state_dict() if meta is not None else None  # collective under ZeRO-3
    report_checkpoint(
        learner,
        metrics,
        {"step": step},
        final_weights=weights,
        metadata=meta,
        export=export_reward_model,
    )


def rm_train_loop(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker."""
    from ray_rlhf.learner.rm import RMLearner, meta_batch, pair_batch

    cfg: RLHFConfig = config["cfg"]
    rank, world = setup_worker(cfg)
    train, held_out = ray.get(config["train_ref"]), ray.get(config["eval_ref"])
    meta_set = ray.get(config["meta_ref"]) if config["meta_ref"] is not None else None
    n = train["chosen_input_ids"].shape[0]
    learner = RMLearner(
        config["model_dir"],
        cfg.model,
        cfg.learner,
        cfg.rm,
        micro_batch_per_worker=cfg.rm.batch_size // world,
        seed=cfg.run.seed,
    )
    start = restore_step(learner, "rm", config.get(STORAGE_KEY))
    writer = MetricsWriter(config["metrics_dir"], resume_step=start) if rank == 0 else None
    window: list[dict[str, float]] = []
    tick = time.perf_counter()
    for step in range(start, cfg.rm.steps):
        idx = global_batch_indices(n, cfg.rm.batch_size, step, cfg.run.seed)[rank::world]
        meta_rows = None
        if meta_set is not None:  # MetaRM: this step's meta prompts, resumable like `idx`
            k, size = cfg.rm.meta.k, cfg.rm.meta.batch_size
            prompts = global_batch_indices(
                meta_set["input_ids"].shape[0] // k, size, step, cfg.run.seed
            )
            meta_rows = meta_batch(meta_set, prompts[rank::world], k)
        window.append(learner.train_step(pair_batch(train, idx), meta_rows))
        done = step + 1
        final = done == cfg.rm.steps
        evaluate = final or done % cfg.rm.eval_every == 0
        if not (final or evaluate or done % cfg.rm.log_every == 0):
            continue
        metrics = mean_over_ranks({k: sum(m[k] for m in window) / len(window) for k in window[0]})
        elapsed, tick = time.perf_counter() - tick, time.perf_counter()
        metrics["perf/steps_per_s"] = len(window) / elapsed
        metrics["rm/step"] = done
        window = []
        if evaluate:
            metrics |= _evaluate(learner, held_out, rank, world)
        if writer is not None:
            writer.log(done, metrics)  # the driver's progress bar reads these rows
        every = cfg.rm.checkpoint_every
        save = final or (every > 0 and done % every == 0)
        meta = _metadata(cfg, config, metrics, done) if final else None
        _report(learner, metrics, done, save=save, meta=meta)
    if writer is not None:
        writer.close()


def _postfix(row: Row) -> str:
    """The RM bar's metrics: training loss and accuracy, held-out accuracy when present."""
    fields = [("loss", "rm/loss", ".3f"), ("acc", "rm/accuracy", ".3f")]
    return metrics_postfix(row, [*fields, ("eval acc", "eval/accuracy", ".3f")])


def run_rm_trainer(
    cfg: RLHFConfig,
    *,
    model_dir: Path,
    train: dict[str, torch.Tensor],
    eval: dict[str, torch.Tensor],  # noqa: A002 - the brief's name for the held-out pairs
    run_dir: Path,
    meta: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Train a reward model on tokenized pairs and write it to `run_dir/reward_model`.

    Args:
        model_dir: Causal LM (new head) or saved reward model to start from.
        train: P pairs: chosen_/rejected_ input_ids (P, T) long, attention_mask and
            response_mask (P, T) bool; optionally margin (P,) float.
        eval: Held-out pairs in the same layout (accuracy only).
        meta: MetaRM's meta responses (`loops.rm.tokenize_meta_responses`), required with
            `rm.meta.enabled`.

    Returns:
        The HF reward-model dir (`load_reward_model`, `RewardScorer` kind "model").
    """
    loop_config = {
        "cfg": cfg,
        # Absolute: Ray Train workers run in their own working directory.
        "model_dir": str(Path(model_dir).resolve()),
        "train_ref": ray.put(train),
        "eval_ref": ray.put(eval),
        "meta_ref": ray.put(meta) if meta is not None else None,
        "eval_pairs": int(eval["chosen_input_ids"].shape[0]),
        "metrics_dir": str((run_dir / "rm").resolve()),
    }
    progress = StageProgress("rm", cfg.rm.steps, "step", _postfix, stride=cfg.rm.log_every)
    result = fit_learners(
        cfg, rm_train_loop, loop_config, run_dir=run_dir, name="rm", progress=progress
    )
    return copy_final_policy(result, run_dir / "reward_model")
