"""Steps every driver shares: the run dir, the base model, the toy-world files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path

import yaml

from ray_rlhf.config import ConfigError, RLHFConfig, to_dict
from ray_rlhf.config_diff import result_changes
from ray_rlhf.logs import attach_driver_log

DONE_MARKER = "DONE.json"
CONFIG_FILE = "config.yaml"
"""The run's config, written by `preflight` once the checks pass (token limits resolved)."""

logger = logging.getLogger(__name__)


class RunDirError(ConfigError):
    """The run dir cannot be used: it holds a finished run, or its path is unusable here."""

    kind = "run dir error"
    hint = (
        "Pick another run.name (or run.output_dir), or set run.overwrite=true to replace a "
        "finished run; an unfinished run dir resumes."
    )


class ConfigChangedError(RunDirError):
    """An unfinished run dir holds a run of another config (in a key that changes the result)."""

    hint = (
        "Rerun with the stored values (the run dir's config.yaml), pick another run.name to "
        "start a new run, or set run.allow_config_change=true to resume with the new values "
        "(the result then mixes both configs)."
    )


# Set by Ray's job supervisor in the driver of a `ray job submit` job.
IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def prepare_run_dir(cfg: RLHFConfig) -> Path:
    """Create the run dir and send the driver's logs to its `logs/driver.log`.

    A dir holding a finished run (`DONE.json`) is refused unless `run.overwrite` is set, so
    a finished result is never mixed with a new one. An unfinished dir is reused: that is
    how a stopped run resumes, under the config it started with (`check_resume_config`).
    `preflight` writes the run's `config.yaml` once its checks pass.
    """
    run_dir = cfg.run.run_dir
    if IN_RAY_JOB in os.environ and not run_dir.is_absolute():
        raise RunDirError(
            f"run.output_dir: {cfg.run.output_dir!r} is relative, but this is a Ray job whose "
            "working dir is a temporary copy; give an absolute path on shared storage"
        )
    if (run_dir / DONE_MARKER).exists():
        if not cfg.run.overwrite:
            raise RunDirError(
                f"run.name: {run_dir} holds a finished run; pick another run.name or set "
                "run.overwrite=true"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    attach_driver_log(run_dir)
    check_resume_config(cfg, run_dir)
    return run_dir


def check_resume_config(
    cfg: RLHFConfig, run_dir: Path, *, only: Collection[str] | None = None
) -> None:
    """Refuses to continue the run stored in `run_dir` under a config that changes its result.

    Compares the stored `config.yaml` (if any) with `cfg` over the keys that decide the
    result (`ray_rlhf.config_diff`); with `run.allow_config_change` a difference is logged
    as a warning instead.

    Args:
        only: Compare just these dotted keys (preflight: the token limits it resolved).

    Raises:
        ConfigChangedError: Naming every differing key, old -> new.
    """
    stored = run_dir / CONFIG_FILE
    if not stored.is_file():
        return
    try:
        old = yaml.safe_load(stored.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunDirError(
            f"run.name: {run_dir} holds an unfinished run whose {CONFIG_FILE} is not valid YAML "
            f"({err}); restore it, or pick another run.name"
        ) from None
    changes = result_changes(old, to_dict(cfg), only=only)
    if not changes:
        return
    listed = "; ".join(change.describe() for change in changes)
    if cfg.run.allow_config_change:
        logger.warning(
            "resuming %s with a changed config (run.allow_config_change=true): %s", run_dir, listed
        )
        return
    raise ConfigChangedError(
        f"run.name: {run_dir} holds an unfinished run of another config; resuming it would mix "
        f"the two. Changed: {listed}"
    )


def mark_done(run_dir: Path, summary: dict) -> None:
    """Write the completion marker (last, so its presence means everything else is there)."""
    tmp = run_dir / f".{DONE_MARKER}.partial"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    tmp.rename(run_dir / DONE_MARKER)


def prepare_base_model(cfg: RLHFConfig, run_dir: Path) -> Path:
    """The starting policy dir: `model.path` if set (validated), else a fresh tiny model."""
    from ray_rlhf.models.checkpoint import validate_model_dir

    if cfg.model.path is not None:
        return validate_model_dir(cfg.model.path)
    from ray_rlhf.data.toyworld import vocabulary
    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model
    from ray_rlhf.models.tokenizer import build_word_tokenizer

    out = run_dir / "base"
    if not (out / "config.json").exists():
        tokenizer = build_word_tokenizer(vocabulary(cfg.data.toyworld))
        spec = TinyModelSpec(**dataclasses.asdict(cfg.model.tiny))
        write_tiny_model(out, tokenizer, spec)
    return out


def toyworld_files(cfg: RLHFConfig, run_dir: Path) -> dict[str, Path]:
    """Build the toy world's splits from config and write them as jsonl under the run dir."""
    from ray_rlhf.data.toyworld import build_splits, write_splits

    out = run_dir / "toyworld"
    return write_splits(build_splits(cfg.data.toyworld), out)
