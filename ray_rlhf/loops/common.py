"""Steps every driver shares: the run dir, the base model, the toy-world files."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from ray_rlhf.config import ConfigError, RLHFConfig, dump_config
from ray_rlhf.logs import attach_driver_log

DONE_MARKER = "DONE.json"


class RunDirError(ConfigError):
    """The run dir cannot be used: it holds a finished run, or its path is unusable here."""

    kind = "run dir error"
    hint = (
        "Pick another run.name (or run.output_dir), or set run.overwrite=true to replace a "
        "finished run; an unfinished run dir resumes."
    )


# Set by Ray's job supervisor in the driver of a `ray job submit` job.
IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def prepare_run_dir(cfg: RLHFConfig) -> Path:
    """Create the run dir, send the driver's logs to its `logs/driver.log`, save the config.

    A dir holding a finished run (`DONE.json`) is refused unless `run.overwrite` is set, so
    a finished result is never mixed with a new one. An unfinished dir is reused: that is
    how a stopped run resumes.
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
    dump_config(cfg, run_dir / "config.yaml")
    return run_dir


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
