"""Placing sequence rewards on tokens (pure torch)."""

from __future__ import annotations

import torch


def place_last_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence score on its last response token (the classic bandit placement).

    Args:
        scores: (N,) sequence rewards.
        response_mask: (N, T) bool, True where the token is part of the response.

    Returns:
        (N, T) float32, zero except at each row's last response token; rows without a
        response token stay all-zero.
    """
    n, t = response_mask.shape
    positions = torch.arange(t, device=response_mask.device).expand(n, t)
    last = torch.where(response_mask, positions, -1).max(dim=1).values
    out = torch.zeros(n, t, dtype=torch.float32, device=response_mask.device)
    has = last >= 0
    out[has, last[has]] = scores[has].float()
    return out
