"""Checkpoint pieces shared by the Ray Train runs (SFT, PPO, RM): HF export and hand-back."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

HF_SUBDIR = "hf"
STATE_FILE = "state.json"


def export_hf_policy(
    model_dir: Path, weights: dict[str, torch.Tensor], out_dir: Path, metadata: dict[str, Any]
) -> None:
    """Write `weights` as an HF causal-LM directory shaped like `model_dir` (+ tokenizer)."""
    from ray_rlhf.models.builders import load_policy, load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    model = load_policy(model_dir)
    model.load_state_dict(weights)
    save_hf_model(model, load_tokenizer(model_dir), out_dir, metadata=metadata)


def copy_final_policy(result: Any, out: Path) -> Path:
    """Copy the HF dir inside a Ray Train result's final checkpoint to `out` (atomically)."""
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as directory:
        src = Path(directory) / HF_SUBDIR
        if not src.is_dir():
            raise RuntimeError(f"final checkpoint {directory} has no '{HF_SUBDIR}' dir")
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def report_checkpoint(
    learner: Any,
    metrics: dict[str, float],
    state: dict[str, Any],
    *,
    final_weights: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
    export: Callable[[Path, dict[str, torch.Tensor], Path, dict[str, Any]], None] | None = None,
) -> None:
    """Every rank: write the learner's engine shards (+ on rank 0 the JSON `state`, and the
    HF export of `final_weights` when given) and report them to Ray Train as one checkpoint.

    `export(model_dir, weights, out_dir, metadata)` writes the HF dir; default
    `export_hf_policy` (a causal LM). The RM run passes its reward-model exporter.
    """
    import ray.train

    from ray_rlhf.models.checkpoint import save_json_atomic

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        learner.save_checkpoint(tmp)
        if rank == 0:
            save_json_atomic(Path(tmp) / STATE_FILE, state)
            if final_weights is not None:
                out = Path(tmp) / HF_SUBDIR
                writer = export_hf_policy if export is None else export
                writer(learner.model_dir, final_weights, out, metadata or {})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore_latest(learner: Any) -> dict[str, Any] | None:
    """Load the checkpoint Ray Train hands this worker (after a restart or on a rerun of
    the same run) into `learner`; its JSON state, or None when starting fresh.

    Raises:
        CheckpointError: The checkpoint does not fit the learner (another model or config
            wrote this run dir); a retry would fail the same way.
    """
    import ray.train

    from ray_rlhf.errors import CheckpointError
    from ray_rlhf.models.checkpoint import load_json

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        try:
            learner.load_checkpoint(directory)
            return load_json(Path(directory) / STATE_FILE)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"the latest checkpoint of this run ({checkpoint.path}) does not fit the "
                f"{type(learner).__name__} of this config: {type(err).__name__}: "
                f"{str(err).strip().splitlines()[0][:300]}"
            ) from err


def restore_step(learner: Any, tag: str) -> int:
    """The step to continue from after `restore_latest` (0 when starting fresh)."""
    state = restore_latest(learner)
    if state is None:
        return 0
    logger.info("%s: resumed from step %d", tag, state["step"])
    return int(state["step"])
