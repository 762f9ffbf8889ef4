"""Policy logits at the response positions only: the LM head never sees the rest.

A causal LM's head maps every position's hidden state to a full-vocabulary row, a
(B, T, V) tensor that dwarfs the (B, T, H) activations (V = 49k, H = 576 for SmolLM2-135M)
although PPO reads only the response tokens' rows. A forward pre-hook on the head keeps
just those hidden states, so the model returns (1, N, V) logits for its N response tokens,
the backward pass never builds a (B, T, V) gradient, and any scaling the model applies
after its head (soft-capping, logit scales) still applies.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_rlhf.algo.tokens import logit_positions


def _keep_positions(positions: torch.Tensor):
    """A forward pre-hook giving the head hidden[positions] as one (1, N, H) row."""

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]  # (B, T, H)
        if tuple(hidden.shape[:2]) != tuple(positions.shape):
            raise RuntimeError(
                f"LM head got hidden states {tuple(hidden.shape)} for positions "
                f"{tuple(positions.shape)}: this model does not apply its head to every "
                "position once"
            )
        return (hidden[positions].unsqueeze(0), *args[1:])

    return hook


def response_logits(
    model: Any,
    hf_model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Logits at `logit_positions(mask)`, row-major: what `algo.response_token_*` take.

    Args:
        model: What to call (the HF model, or a DeepSpeed engine wrapping it).
        hf_model: The HF causal LM itself (whose output embeddings get the hook).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) bool, True on real tokens.
        mask: (B, T) bool, True where the token is part of the response.

    Returns:
        (N, V) in the model's dtype, N = `mask[:, 1:].sum()`.
    """
    positions = logit_positions(mask).to(input_ids.device)
    head = hf_model.get_output_embeddings()
    if head is None:  # no separate head to hook: select from the full logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long()).logits
        return logits[positions]
    handle = head.register_forward_pre_hook(_keep_positions(positions))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long()).logits
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])  # (1, N, V) -> (N, V)
