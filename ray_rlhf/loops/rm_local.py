"""Reward-model training in the calling process (world size 1), for ensembles and evidence.

The Ray Train run (`ray_rlhf.distributed.rm_trainer`) is the production path. Preference
strength needs M small reward models trained side by side, and the evidence grid dozens of
short runs; both run this function inside Ray tasks instead, one process per model, which
costs no worker-group setup per model. Same `RMLearner`, same loss, same data order.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_rlhf.config import RLHFConfig
from ray_rlhf.data.sampler import global_batch_indices

_SCORE_ROWS = 256
"""Pairs per scoring forward."""


def ensure_process_group() -> None:
    """A one-process gloo group for DeepSpeed, unless torch.distributed is initialized.

    The group lives as long as the process (DeepSpeed keeps a handle to it), so several
    reward models can be trained one after another in the same process.
    """
    if torch.distributed.is_initialized():
        return
    store = Path(tempfile.mkdtemp(prefix="rm_local_")) / "store"
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=0, world_size=1
    )


@dataclass(frozen=True)
class LocalRMResult:
    """Margins (chosen minus rejected) of the trained model on each requested pair set."""

    margins: dict[str, torch.Tensor]
    """Name -> (P,) float32 margins."""
    final_loss: float
    """Mean `rm/loss` over the last 10% of steps."""
    prompt_free_gaps: dict[str, torch.Tensor]
    """Name -> (P,) prompt-free gaps dr2 (in-batch prompts of each scoring chunk); empty
    unless asked for."""


def pair_margins(learner, data: dict[str, torch.Tensor], prompt_free: bool = False) -> torch.Tensor:
    """(P,) float32 chosen minus rejected scores of every pair in `data`, in order; with
    `prompt_free`, the pairs' prompt-free gaps dr2 instead (`RMLearner.prompt_free_gaps`,
    alternative prompts drawn from the same chunk of `_SCORE_ROWS` pairs)."""
    from ray_rlhf.learner.rm import pair_batch

    n = data["chosen_input_ids"].shape[0]
    score = learner.prompt_free_gaps if prompt_free else learner.margins
    parts = [
        score(pair_batch(data, torch.arange(lo, min(lo + _SCORE_ROWS, n))))
        for lo in range(0, n, _SCORE_ROWS)
    ]
    return torch.cat(parts)


def train_rm_local(
    cfg: RLHFConfig,
    model_dir: str | Path,
    train: dict[str, torch.Tensor],
    score: dict[str, dict[str, torch.Tensor]],
    *,
    seed: int,
    threads: int = 1,
    prompt_free: bool = False,
) -> LocalRMResult:
    """Train one reward model on `train` with `cfg.rm`, then score the pair sets `score`.

    Args:
        cfg: `rm` (loss, steps, batch size, lr...), `learner` (ZeRO stage), `model`.
        model_dir: Causal LM (new head) or reward model to start from.
        train: Tokenized pairs (`ray_rlhf.loops.rm.tokenize_pairs`).
        score: Name -> tokenized pairs to score after training.
        seed: Head initialization and data order (`global_batch_indices`).
        threads: Torch intra-op threads.
        prompt_free: Also return the prompt-free gaps dr2 of every scored pair set.

    Returns:
        The margins on every pair set and the final training loss.
    """
    from ray_rlhf.learner.rm import RMLearner, pair_batch

    torch.set_num_threads(threads)
    ensure_process_group()
    learner = RMLearner(
        model_dir,
        cfg.model,
        cfg.learner,
        cfg.rm,
        micro_batch_per_worker=cfg.rm.batch_size,
        seed=seed,
    )
    n = train["chosen_input_ids"].shape[0]
    losses = []
    for step in range(cfg.rm.steps):
        idx = global_batch_indices(n, cfg.rm.batch_size, step, seed)
        losses.append(learner.train_step(pair_batch(train, idx))["rm/loss"])
    tail = losses[-max(1, len(losses) // 10) :]
    margins = {name: pair_margins(learner, data) for name, data in score.items()}
    gaps = (
        {name: pair_margins(learner, data, True) for name, data in score.items()}
        if prompt_free
        else {}
    )  # after `margins`, so the engine is in eval mode
    return LocalRMResult(margins, sum(tail) / len(tail), gaps)
