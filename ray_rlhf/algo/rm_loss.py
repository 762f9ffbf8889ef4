"""Reward-model losses on preference pairs (chosen y_w, rejected y_l).

Scores are ``(P,)``: one scalar reward per pair member, ``delta = r(x, y_w) - r(x, y_l)``.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class RMLossStats(NamedTuple):
    """Detached, unweighted diagnostics of :func:`bradley_terry_loss` (scalars).

    Attributes:
        accuracy: Share of pairs with ``delta > 0`` (ties count as wrong).
        mean_margin: Mean ``delta`` over the pairs, without the target margin.
    """

    accuracy: Tensor
    mean_margin: Tensor


def preference_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Share of pairs where the chosen response scores strictly higher.

    Args:
        chosen: Scores of the chosen responses ``(P,)``.
        rejected: Scores of the rejected responses ``(P,)``.

    Returns:
        Scalar in [0, 1], in the dtype of ``chosen``.
    """
    return (chosen > rejected).to(chosen.dtype).mean()


def group_pair_agreement(scores: Tensor, truth: Tensor, valid: Tensor) -> tuple[int, int]:
    """How often a reward model orders two responses of one prompt as the truth does.

    Every pair (i, j), i < j, of valid responses of a group whose true rewards differ is
    counted; it agrees when the scores differ in the same direction (a score tie is a
    disagreement), as preference accuracy counts ties.

    Args:
        scores: ``(G, K)`` reward-model scores, K responses per prompt (padded).
        truth: ``(G, K)`` true rewards.
        valid: ``(G, K)`` bool, False on padding (a group may hold fewer than K).

    Returns:
        (agreeing pairs, counted pairs); the accuracy is their ratio (undefined for 0 pairs).
    """
    if not (scores.shape == truth.shape == valid.shape) or scores.dim() != 2:
        raise ValueError(
            f"scores, truth and valid must be (G, K) of one shape, got {tuple(scores.shape)}, "
            f"{tuple(truth.shape)}, {tuple(valid.shape)}"
        )
    k = scores.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool).triu(1)  # (K, K): i < j
    dt = truth[:, :, None] - truth[:, None, :]  # (G, K, K)
    ds = scores[:, :, None] - scores[:, None, :]
    counted = upper & valid[:, :, None] & valid[:, None, :] & (dt != 0)
    agree = counted & (ds * dt > 0)
    return int(agree.sum()), int(counted.sum())


def _check_label_smoothing(label_smoothing: float | Tensor) -> None:
    """Raise ValueError unless every smoothing value lies in [0, 1]."""
    alpha = torch.as_tensor(label_smoothing)
    if bool(((alpha < 0) | (alpha > 1)).any()):
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")


def _normalized_weights(weights: Tensor) -> Tensor:
    """Detached pair weights scaled to sum to 1; ValueError if negative or all zero."""
    weights = weights.detach()  # importance of a pair, not something to optimize
    if bool((weights < 0).any()) or not bool(weights.sum() > 0):
        raise ValueError("weights must be non-negative with a positive sum")
    return weights / weights.sum()


def bradley_terry_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | float | None = None,
    label_smoothing: Tensor | float = 0.0,
    weights: Tensor | None = None,
) -> tuple[Tensor, RMLossStats]:
    """Bradley-Terry pairwise loss with optional margin, label smoothing and pair weights.

    ``L_i = -[(1 - a) log sigma(delta_i - m_i) + a log sigma(-(delta_i - m_i))]``, and the
    loss is the mean of ``L_i``, or ``sum_i w_i L_i`` with ``w`` normalized to sum to 1.

    - ``m = 0, a = 0``: plain BT (Ouyang et al. 2022, arXiv 2203.02155, eq. 1).
    - margin inside the sigmoid as in Llama 2 (Touvron et al. 2023, arXiv 2307.09288,
      eq. 2); per-pair preference strength as an adaptive margin and label smoothing
      (Wang et al. 2024, arXiv 2401.06080). A per-pair ``a`` lets smoothing apply
      only to suspect pairs; ``a > 0.5`` prefers the rejected response.
    - ``weights``: per-pair priorities such as the prompt-free reweighting of Mao et al.
      2025 (arXiv 2504.06020); they are detached, gradients never flow into them.

    ``log sigma`` is computed with ``logsigmoid``, stable for large ``|delta|``.

    Args:
        chosen_scores: Reward of each chosen response ``(P,)``.
        rejected_scores: Reward of each rejected response ``(P,)``.
        margin: Target margin ``m``, a scalar or per pair ``(P,)``; None means 0.
        label_smoothing: Smoothing ``a`` in [0, 1], a scalar or per pair ``(P,)``.
        weights: Non-negative per-pair weights ``(P,)``; None means uniform.

    Returns:
        ``(loss, RMLossStats)``; the loss is a scalar.

    Raises:
        ValueError: If ``label_smoothing`` leaves [0, 1], or ``weights`` has a negative
            entry or sums to 0.
    """
    _check_label_smoothing(label_smoothing)
    delta = chosen_scores - rejected_scores  # (P,)
    logits = delta if margin is None else delta - margin
    per_pair = -(
        (1.0 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)
    )
    if weights is None:
        loss = per_pair.mean()
    else:
        loss = (_normalized_weights(weights) * per_pair).sum()
    stats = RMLossStats(
        accuracy=preference_accuracy(chosen_scores, rejected_scores).detach(),
        mean_margin=delta.detach().mean(),
    )
    return loss, stats
