"""Masked reductions and per-token quantities computed from logits.

Every function takes a boolean ``mask`` of the same shape as the values it reduces:
True where the token is part of the response (or, generally, where the value counts).
Positions where the mask is False never influence a result, even if they hold NaN or inf.
"""

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is True.

    Args:
        x: Values, any shape, e.g. ``(B, T)``.
        mask: Bool tensor, same shape as ``x``; True where the value counts.
        dim: Dimension to reduce; ``None`` reduces over all elements.

    Returns:
        The masked sum: a scalar when ``dim`` is None, otherwise ``x`` with ``dim`` removed.
    """
    kept = torch.where(mask, x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    A slice with no True position has mean 0 (not NaN), so an all-padding row cannot
    poison a batch statistic.

    Args:
        x: Values, any shape, e.g. ``(B, T)``.
        mask: Bool tensor, same shape as ``x``; True where the value counts.
        dim: Dimension to reduce; ``None`` reduces over all elements.

    Returns:
        The masked mean: a scalar when ``dim`` is None, otherwise ``x`` with ``dim`` removed.
    """
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is True.

    Reads the number of True positions on the host (one device sync) to validate it.

    Args:
        x: Values, any shape, e.g. ``(B, T)``.
        mask: Bool tensor, same shape as ``x``; True where the value counts.
        unbiased: Apply Bessel's correction ``n / (n - 1)``.

    Returns:
        Scalar variance.

    Raises:
        ValueError: If fewer than one (biased) or two (unbiased) positions are True.
    """
    count = int(mask.sum().item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(f"masked_var needs at least {needed} True mask positions, got {count}")
    centered = x - masked_mean(x, mask)
    var = masked_mean(centered.square(), mask)
    return var * count / (count - 1) if unbiased else var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardize ``x`` with the mean and (unbiased) variance of its masked positions.

    Args:
        x: Values, any shape, e.g. ``(B, T)``.
        mask: Bool tensor, same shape as ``x``; True where the value counts.
        shift_mean: If False, add the mean back so only the scale changes (keeps the sign
            of e.g. rewards that are already centered elsewhere).
        eps: Added to the variance before the square root.

    Returns:
        Tensor shaped like ``x``; positions where ``mask`` is False are 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def gather_last(x: Tensor, mask: Tensor) -> Tensor:
    """Value of ``x`` at the last True position of each row.

    Typical use: a reward or value head scores every position and the sequence score is
    the one at the last response token.

    Args:
        x: Values, shape ``(B, T)``.
        mask: Bool tensor ``(B, T)``; True where the token is part of the response. The
            True positions need not be contiguous.

    Returns:
        Tensor ``(B,)``; 0 for rows with no True position.
    """
    positions = torch.arange(x.shape[-1], device=x.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=-1).values  # (B,)
    picked = x.gather(-1, last.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(last >= 0, picked, torch.zeros_like(picked))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution given by ``logits`` over the last dim.

    Args:
        logits: Unnormalized log-probabilities, shape ``(..., V)``, e.g. ``(B, T, V)``;
            finite (a ``-inf`` logit gives ``0 * -inf = NaN``).

    Returns:
        Entropy in nats, shape ``(...)``, e.g. ``(B, T)``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Per-token entropy computed only where ``mask`` is True.

    Prompt tokens usually outnumber response tokens, so skipping them saves the
    ``(B, T, V)`` softmax work and memory for the masked-out positions.

    Args:
        logits: Unnormalized log-probabilities, shape ``(B, T, V)``.
        mask: Bool tensor ``(B, T)``; True where the token is part of the response.

    Returns:
        Entropy in nats, shape ``(B, T)``; positions where ``mask`` is False are 0.
    """
    selected = entropy_from_logits(logits[mask])  # (N,) for the N True positions
    out = torch.zeros(mask.shape, dtype=selected.dtype, device=logits.device)
    return out.masked_scatter(mask, selected)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label token under ``logits``.

    Computed as ``logits[label] - logsumexp(logits)``: unlike gathering from a full
    ``log_softmax``, autograd keeps no extra ``(B, T, V)`` tensor for the backward pass.
    The result has the dtype of ``logits``; upcast them first for float32 precision.

    Args:
        logits: Unnormalized log-probabilities, shape ``(B, T, V)``, already aligned so
            ``logits[:, t]`` predicts ``labels[:, t]``.
        labels: Token ids, shape ``(B, T)``, int64.

    Returns:
        Log-probabilities, shape ``(B, T)``.
    """
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
