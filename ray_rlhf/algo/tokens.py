"""Aligning per-position model outputs with the tokens they score (pure torch).

Convention used everywhere: entry t of a per-token tensor refers to token `input_ids[:, t]`.
The logits / hidden state at position t - 1 produced it, so both logprobs and values are
shifted right by one; position 0 (never a response token) gets 0.
"""

from __future__ import annotations

import torch

from ray_rlhf.algo.masking import logprobs_from_logits


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(input_ids[:, t] | input_ids[:, :t]) at entry t.

    Args:
        logits: (B, T, V) model outputs.
        input_ids: (B, T) token ids.

    Returns:
        (B, T) float32; column 0 is 0.
    """
    lp = logprobs_from_logits(logits[:, :-1].float(), input_ids[:, 1:])
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def token_values(values: torch.Tensor) -> torch.Tensor:
    """Value of the state *before* token t at entry t (the critic's output at t - 1).

    Args:
        values: (B, T) per-position critic outputs.

    Returns:
        (B, T); column 0 is 0.
    """
    return torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)
