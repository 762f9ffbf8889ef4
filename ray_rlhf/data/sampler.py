"""Deterministic, resumable batch order: the data position is just the step number."""

from __future__ import annotations

from typing import Any

import torch


def global_batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Example indices of global batch `step`.

    The stream is a concatenation of seeded per-epoch permutations of `range(num_examples)`,
    cut into consecutive batches, so a run resumed at step k sees exactly the batches an
    uninterrupted run would have. Ranks take `indices[rank::world_size]`.

    Returns:
        (batch_size,) long tensor.
    """
    if num_examples <= 0 or batch_size <= 0:
        raise ValueError(f"need num_examples, batch_size > 0; got {num_examples}, {batch_size}")
    out: list[torch.Tensor] = []
    taken = 0
    while taken < batch_size:
        epoch, offset = divmod(step * batch_size + taken, num_examples)
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        chunk = torch.randperm(num_examples, generator=gen)[offset : offset + batch_size - taken]
        out.append(chunk)
        taken += len(chunk)
    return torch.cat(out)


def held_out_split(
    dataset: Any, fraction: float, seed: int, *, max_rows: int | None = None
) -> tuple[Any, Any]:
    """(train, held out) rows of a `datasets.Dataset`: a seeded shuffle, then the first
    max(1, round(fraction * rows)) rows, at most `max_rows`, are held out.

    Raises:
        ValueError: The dataset has fewer than 2 rows (nothing would be left to train on).
    """
    if dataset.num_rows < 2:
        raise ValueError(f"need at least 2 rows to hold some out, got {dataset.num_rows}")
    shuffled = dataset.shuffle(seed=seed)
    n_held = max(1, round(fraction * shuffled.num_rows))
    if max_rows is not None:
        n_held = min(n_held, max_rows)
    n_held = min(n_held, shuffled.num_rows - 1)
    return shuffled.select(range(n_held, shuffled.num_rows)), shuffled.select(range(n_held))
