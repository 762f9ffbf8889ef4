"""Supervised fine-tuning loss (pure torch)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SFTLossStats(NamedTuple):
    """Token count and mean negative log-likelihood (detached)."""

    tokens: torch.Tensor
    nll: torch.Tensor


def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, SFTLossStats]:
    """Mean next-token cross-entropy over response tokens.

    Position t's logits predict token t + 1, so the loss pairs `logits[:, :-1]` with
    `input_ids[:, 1:]` and counts a pair when the *predicted* token is a response token.

    Args:
        logits: (B, T, V) model outputs.
        input_ids: (B, T) token ids.
        response_mask: (B, T) bool, True where the token is part of the response
            (including its EOS); prompt and padding are False.

    Returns:
        The token-mean loss (a scalar; 0 with no response tokens) and its stats.
    """
    target_mask = response_mask[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none"
    ).view_as(target_mask)
    tokens = target_mask.sum()
    loss = (nll * target_mask).sum() / tokens.clamp(min=1)
    return loss, SFTLossStats(tokens=tokens.detach(), nll=loss.detach())
