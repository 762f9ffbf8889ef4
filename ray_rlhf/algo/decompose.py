"""Prompt-free / prompt-related reward decomposition and prioritized pair weights.

Mao et al. 2025, "Information-Theoretic Reward Decomposition for Generalizable RLHF"
(arXiv 2504.06020); docs/algorithms.md §1. ``r(x, y) = r1(x, y) + r2(y)``: the prompt-free
gap ``dr2`` is the preference the reward model expresses for a pair averaged over the
prompts the pair could have come with, and ``dr1 = dr - dr2`` is the prompt-related rest.

Shapes: ``P`` pairs, ``M`` alternative prompts scored per pair.
"""

from typing import NamedTuple

import torch
from torch import Tensor


class PromptFreeGap(NamedTuple):
    """Output of :func:`cross_prompt_gaps`.

    Attributes:
        mean_prob: ``p_bar`` ``(P,)``, weighted mean of ``sigma(gaps)`` over the prompts.
        prompt_free_gap: ``dr2 = logit(p_bar)`` ``(P,)``, ``p_bar`` clamped to
            ``[eps, 1 - eps]`` first.
    """

    mean_prob: Tensor
    prompt_free_gap: Tensor


def _row_weights(gaps: Tensor, weights: Tensor | None) -> Tensor:
    """Per-pair prompt weights ``(P, M)`` normalized to sum to 1 over ``M``.

    Raises:
        ValueError: If ``weights`` has the wrong shape, a negative entry or a zero row.
    """
    if weights is None:
        return torch.full_like(gaps, 1.0 / gaps.shape[-1])
    if weights.shape != gaps.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} != gaps {tuple(gaps.shape)}")
    row_sum = weights.sum(dim=-1, keepdim=True)  # (P, 1)
    if bool((weights < 0).any()) or not bool((row_sum > 0).all()):
        raise ValueError("weights must be non-negative with a positive sum in every row")
    return weights / row_sum


def cross_prompt_gaps(
    gaps: Tensor, weights: Tensor | None = None, eps: float = 1e-6
) -> PromptFreeGap:
    """Prompt-free gap of each pair from its scores under alternative prompts.

    ``p_bar_i = sum_m w_im sigma(gaps_im)`` estimates ``E_{x' ~ P(X | y1, y2)}
    sigma(dr(x', y1, y2))`` and ``dr2_i = logit(p_bar_i)`` (Mao et al. 2025,
    docs/algorithms.md §1: the direct estimate; :func:`prompt_free_gap_bisection` is the option).

    Args:
        gaps: ``dr(x'_m, y1_i, y2_i)`` ``(P, M)``: pair ``i`` scored under prompt ``m``.
            Which prompts fill the columns is the caller's choice
            (see :func:`in_batch_alternative_indices`).
        weights: Non-negative importance weights toward plausible prompts ``(P, M)``,
            normalized per row; None means uniform.
        eps: Clamp for ``p_bar`` so the logit stays finite.

    Returns:
        :class:`PromptFreeGap` with ``mean_prob`` and ``prompt_free_gap``, both ``(P,)``.
    """
    probs = torch.sigmoid(gaps)  # (P, M)
    mean_prob = (_row_weights(gaps, weights) * probs).sum(dim=-1)  # (P,)
    return PromptFreeGap(mean_prob, torch.logit(mean_prob.clamp(eps, 1.0 - eps)))


def prompt_related_gap(full_gap: Tensor, prompt_free_gap: Tensor) -> Tensor:
    """Prompt-related gap ``dr1 = dr - dr2`` (Mao et al. 2025, arXiv 2504.06020).

    Args:
        full_gap: ``dr(x, y1, y2)`` under the pair's own prompt ``(P,)``.
        prompt_free_gap: ``dr2`` ``(P,)`` from :func:`cross_prompt_gaps` or
            :func:`prompt_free_gap_bisection`.

    Returns:
        ``dr1`` ``(P,)``.
    """
    return full_gap - prompt_free_gap


def prompt_free_gap_bisection(
    gaps: Tensor, weights: Tensor | None = None, iters: int = 50
) -> Tensor:
    """Prompt-free gap by a 1-D binary search, the option to :func:`cross_prompt_gaps`.

    OPEN: the paper's mutual-information condition is not reproduced exactly
    (docs/algorithms.md §1), so this solves, per pair, for the shift ``d`` with
    ``sum_m w_im sigma(gaps_im - d) = 1/2``: the prompt-free part that, once removed,
    leaves a preference that is prompt-neutral on average over the alternative prompts.
    The left side decreases in ``d`` and equals >= 1/2 at ``min_m gaps_im`` and <= 1/2 at
    ``max_m gaps_im``, so the root is bracketed there. With ``M = 1`` (or identical columns)
    it equals ``logit(p_bar)``; in general it differs, since ``logit`` of a mean is not the
    root of a mean of shifted sigmoids. No gradient flows through the search.

    Args:
        gaps: ``dr(x'_m, y1_i, y2_i)`` ``(P, M)``, as for :func:`cross_prompt_gaps`.
        weights: Non-negative prompt weights ``(P, M)``; None means uniform.
        iters: Bisection steps; the bracket shrinks by ``2**iters``.

    Returns:
        ``dr2`` ``(P,)``, detached.
    """
    gaps = gaps.detach()
    w = _row_weights(gaps, weights).detach()  # (P, M)
    low = gaps.min(dim=-1).values  # (P,) mean sigma >= 1/2 here
    high = gaps.max(dim=-1).values  # (P,) mean sigma <= 1/2 here
    for _ in range(iters):
        mid = (low + high) / 2
        above = (w * torch.sigmoid(gaps - mid[:, None])).sum(dim=-1) > 0.5  # root > mid
        low = torch.where(above, mid, low)
        high = torch.where(above, high, mid)
    return (low + high) / 2


def in_batch_alternative_indices(
    num_prompts: int, m: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw, for each pair, ``m`` other in-batch prompts to score it under.

    Uniform over the ``num_prompts - 1`` other prompts, with replacement (so ``m`` may
    exceed ``num_prompts - 1``); never the pair's own prompt. Pair ``i`` belongs to prompt
    ``i``. This is the simple default of Mao et al. 2025 (docs/algorithms.md §1).

    Args:
        num_prompts: ``P``, the number of prompts (= pairs) in the batch, at least 2.
        m: ``M``, alternative prompts per pair, at least 1.
        generator: Optional RNG for reproducible draws.

    Returns:
        Long indices ``(P, M)`` into the batch's prompts.

    Raises:
        ValueError: If ``num_prompts < 2`` or ``m < 1``.
    """
    if num_prompts < 2:
        raise ValueError(f"need at least 2 prompts to pick another one, got {num_prompts}")
    if m < 1:
        raise ValueError(f"m must be at least 1, got {m}")
    draws = torch.randint(0, num_prompts - 1, (num_prompts, m), generator=generator)
    own = torch.arange(num_prompts)[:, None]  # (P, 1)
    return draws + (draws >= own).long()  # skip the own index: 0..P-2 -> others


def prioritized_weights(
    prompt_free_gap: Tensor,
    labels_direction: Tensor | None = None,
    tau: float = 1.0,
    alpha: float = 0.5,
) -> Tensor:
    """Stop-gradient pair weights that favour pairs the prompt-free part does not explain.

    ``w = alpha * softmax(-s / tau) + (1 - alpha) / P`` with ``s = dr2 * direction``, the
    signed prompt-free gap toward the label (Mao et al. 2025, docs/algorithms.md §1;
    OPEN weight function, this is the documented default). ``alpha = 1`` is the pure
    softmax, ``alpha = 0`` uniform weights: ``alpha`` is the share of the prioritization.
    The prioritized loss is ``bradley_terry_loss(chosen, rejected, weights=w)``.

    Args:
        prompt_free_gap: ``dr2`` ``(P,)``, measured chosen minus rejected.
        labels_direction: ``+1`` / ``-1`` per pair ``(P,)`` when ``dr2`` is measured in a
            fixed order rather than chosen minus rejected; None means all ``+1``.
        tau: Softmax temperature, > 0.
        alpha: Mixing factor in [0, 1].

    Returns:
        Weights ``(P,)``, detached, summing to 1, decreasing in ``s``.

    Raises:
        ValueError: If ``tau <= 0`` or ``alpha`` leaves [0, 1].
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    signed = prompt_free_gap.detach()
    if labels_direction is not None:
        signed = signed * labels_direction.to(signed.dtype)
    softmax = torch.softmax(-signed / tau, dim=0)  # (P,)
    return alpha * softmax + (1.0 - alpha) / signed.numel()
