"""Deterministic, resumable batch order: the data position is just the step number."""

from __future__ import annotations

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
