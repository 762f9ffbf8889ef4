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
MANIFEST_DIR = "manifest"
STORAGE_KEY = "checkpoint_storage"
"""`fit_learners` puts the run's checkpoint storage dir under this key of the loop config."""


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

    context = ray.train.get_context()
    rank = context.get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        learner.save_checkpoint(tmp)
        if rank == 0:
            save_json_atomic(Path(tmp) / STATE_FILE, state)
            if final_weights is not None:
                out = Path(tmp) / HF_SUBDIR
                writer = export_hf_policy if export is None else export
                writer(learner.model_dir, final_weights, out, metadata or {})
        _write_manifest(Path(tmp), rank, context.get_world_size())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _write_manifest(directory: Path, rank: int, world: int) -> None:
    """`manifest/rank_<r>.json`: the world size and the size of every file this rank wrote,
    so a checkpoint dir can be checked for completeness without Ray Train's bookkeeping."""
    from ray_rlhf.models.checkpoint import save_json_atomic

    files = {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    manifest = directory / MANIFEST_DIR / f"rank_{rank}.json"
    manifest.parent.mkdir(exist_ok=True)
    save_json_atomic(manifest, {"world": world, "files": files})


def is_complete(directory: Path) -> bool:
    """Every rank's manifest is there and every file it lists has the listed size."""
    import json

    manifests = sorted((directory / MANIFEST_DIR).glob("rank_*.json"))
    if not manifests:
        return False
    try:
        parts = [json.loads(m.read_text()) for m in manifests]
    except (OSError, ValueError):
        return False
    if any(p["world"] != len(manifests) for p in parts):
        return False
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size
        for p in parts
        for name, size in p["files"].items()
    )


def newest_complete_checkpoint(storage: Path) -> Path | None:
    """The newest complete `checkpoint_<time>` dir under `storage` (Ray Train's names sort
    by time), or None."""
    for directory in sorted(storage.glob("checkpoint_*"), reverse=True):
        if directory.is_dir() and is_complete(directory):
            return directory
    return None


def _checkpoint_dir(storage: str | None) -> Path | None:
    """The checkpoint to restore: Ray Train's latest registered one, unless the storage
    dir holds a newer complete one. Ray Train registers a reported checkpoint when its
    controller next polls the workers; a worker killed in between (SIGKILL, a lost node)
    leaves a checkpoint on storage that the restarted group would not be given."""
    import ray.train

    registered = ray.train.get_checkpoint()
    path = None if registered is None else Path(registered.path)
    if storage is None or not Path(storage).is_dir():  # not a local / mounted path
        return path
    newest = newest_complete_checkpoint(Path(storage))
    if newest is not None and (path is None or newest.name > path.name):
        logger.warning(
            "resuming from %s, which Ray Train had not registered (%s): its worker was "
            "killed right after reporting it",
            newest.name,
            "no registered checkpoint" if path is None else f"registered: {path.name}",
        )
        return newest
    return path


def restore_latest(learner: Any, storage: str | None = None) -> dict[str, Any] | None:
    """Load the checkpoint to resume from (after a restart or on a rerun of the same run)
    into `learner`; its JSON state, or None when starting fresh.

    Args:
        learner: has `load_checkpoint(directory)`.
        storage: the run's checkpoint storage dir (`loop_config[STORAGE_KEY]`); with it, a
            newer complete checkpoint than the one Ray Train registered is used.

    Raises:
        CheckpointError: The checkpoint does not fit the learner (another model or config
            wrote this run dir); a retry would fail the same way.
    """
    from ray_rlhf.errors import CheckpointError
    from ray_rlhf.models.checkpoint import load_json

    directory = _checkpoint_dir(storage)
    if directory is None:
        return None
    try:
        learner.load_checkpoint(str(directory))
        return load_json(directory / STATE_FILE)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"the latest checkpoint of this run ({directory}) does not fit the "
            f"{type(learner).__name__} of this config: {type(err).__name__}: {_first_cause(err)}"
        ) from err


def _first_cause(err: BaseException, limit: int = 400) -> str:
    """The error's first line, with its first detail when that line only announces a list
    (torch's `Error(s) in loading state_dict for X:` then one line per mismatched tensor)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        more = len(lines) - 2
        text += f" {lines[1]}" + (f" (and {more} more)" if more else "")
    return text[:limit]


def restore_step(learner: Any, tag: str, storage: str | None = None) -> int:
    """The step to continue from after `restore_latest` (0 when starting fresh)."""
    state = restore_latest(learner, storage)
    if state is None:
        return 0
    logger.info("%s: resumed from step %d", tag, state["step"])
    return int(state["step"])
