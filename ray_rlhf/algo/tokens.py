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


def join_prompts_and_responses(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_rows: torch.Tensor,
    response_rows: torch.Tensor,
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """New rows made of one row's prompt tokens followed by another row's response tokens.

    Used to score a response under another prompt, e.g. a preference pair under other
    in-batch prompts for its prompt-free gap (Mao et al. 2025, docs/algorithms.md §1).
    A row's prompt is its real tokens outside the response; its response is the tokens
    under `response_mask` (EOS included when it was there).

    Args:
        input_ids: (N, T) token ids, any padding.
        attention_mask: (N, T) bool, True on real tokens.
        response_mask: (N, T) bool, True on response tokens.
        prompt_rows: (J,) long, the row lending each new row its prompt.
        response_rows: (J,) long, the row lending each new row its response.
        pad_id: Id written after each new row's last real token.

    Returns:
        input_ids (J, W) long right-padded with `pad_id`, attention_mask (J, W) bool and
        response_mask (J, W) bool, W the longest new row.
    """
    prompt_part = attention_mask.bool() & ~response_mask.bool()  # (N, T)
    rows = [
        (input_ids[p][prompt_part[p]], input_ids[r][response_mask[r].bool()])
        for p, r in zip(prompt_rows.tolist(), response_rows.tolist(), strict=True)
    ]
    width = max(len(prompt) + len(response) for prompt, response in rows)
    out_ids = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    out_attention = torch.zeros((len(rows), width), dtype=torch.bool)
    out_response = torch.zeros((len(rows), width), dtype=torch.bool)
    for j, (prompt, response) in enumerate(rows):
        end = len(prompt) + len(response)
        out_ids[j, :end] = torch.cat([prompt, response])
        out_attention[j, :end] = True
        out_response[j, len(prompt) : end] = True
    return {"input_ids": out_ids, "attention_mask": out_attention, "response_mask": out_response}
