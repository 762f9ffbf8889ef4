"""Aligning per-position model outputs with the tokens they score (pure torch).

Convention used everywhere: entry t of a per-token tensor refers to token `input_ids[:, t]`.
The logits / hidden state at position t - 1 produced it, so both logprobs and values are
shifted right by one; position 0 (never a response token) gets 0.

Memory: a full-vocabulary (B, T, V) tensor is the largest thing a learner step allocates,
and most of its positions are prompt or padding. The `response_token_*` functions take the
logits at `logit_positions(mask)` only, an (N, V) tensor for N response tokens, and work
through it in chunks of rows so the float32 temporaries stay small.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ray_rlhf.algo.masking import entropy_from_logits, logprobs_from_logits

DEFAULT_CHUNK_ROWS = 256
"""Logit rows upcast to float32 at a time (256 x a 50k vocabulary: ~50 MB per temporary)."""


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


def logit_positions(mask: torch.Tensor) -> torch.Tensor:
    """Where the logits that score response tokens are: position t - 1 for each token t.

    Args:
        mask: (B, T) bool, True where the token is part of the response (column 0, which no
            position predicts, is ignored).

    Returns:
        (B, T) bool; its row-major True positions line up with `mask[:, 1:]`'s.
    """
    return torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)


def _per_row_chunks(
    fn: Callable[..., torch.Tensor], logits: torch.Tensor, *args: torch.Tensor, chunk_rows: int
) -> torch.Tensor:
    """(N,) float32: `fn(logits_chunk.float(), *arg_chunks)` over chunks of `chunk_rows`."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    parts = zip(logits.split(chunk_rows), *(a.split(chunk_rows) for a in args), strict=True)
    out = [fn(chunk.float(), *rest) for chunk, *rest in parts]
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def _at_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) float32: `values` (N,) at `mask[:, 1:]`'s True entries (shifted back), else 0."""
    scored = mask[:, 1:]
    body = torch.zeros(scored.shape, dtype=values.dtype, device=values.device)
    body = body.masked_scatter(scored, values)
    return torch.cat([torch.zeros_like(body[:, :1]), body], dim=1)


def response_token_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """`token_logprobs` on the response tokens only, from their logits alone.

    Equal to `token_logprobs(full_logits, input_ids) * mask` (differentiable), without a
    (B, T, V) tensor or a float32 copy of one: rows are upcast `chunk_rows` at a time. (With
    autograd, bfloat16 logits' float32 chunks are kept for the backward: N x V float32.)

    Args:
        logits: (N, V) any float dtype: the logits at `logit_positions(mask)`, row-major
            (`full_logits[logit_positions(mask)]`), N = `mask[:, 1:].sum()`.
        input_ids: (B, T) token ids.
        mask: (B, T) bool, True where the token is part of the response.
        chunk_rows: Logit rows per float32 chunk.

    Returns:
        (B, T) float32: log pi(input_ids[:, t] | input_ids[:, :t]) where `mask` (t >= 1),
        0 elsewhere.
    """
    labels = input_ids[:, 1:][mask[:, 1:]]  # (N,)
    lp = _per_row_chunks(logprobs_from_logits, logits, labels, chunk_rows=chunk_rows)
    return _at_tokens(lp, mask)


def response_token_entropy(
    logits: torch.Tensor, mask: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Entropy of the distribution each response token was drawn from, at that token.

    Equal to `masked_entropy_from_logits(full_logits[:, :-1], mask[:, 1:])` shifted to
    token alignment, computed `chunk_rows` rows at a time in float32.

    Args:
        logits: (N, V) the logits at `logit_positions(mask)`, row-major.
        mask: (B, T) bool, True where the token is part of the response.
        chunk_rows: Logit rows per float32 chunk.

    Returns:
        (B, T) float32 nats where `mask` (t >= 1), 0 elsewhere.
    """
    return _at_tokens(_per_row_chunks(entropy_from_logits, logits, chunk_rows=chunk_rows), mask)


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
