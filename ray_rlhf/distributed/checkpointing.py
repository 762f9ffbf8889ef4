"""Checkpoint pieces shared by the Ray Train runs (SFT, PPO): HF export and hand-back."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

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
