"""Preference strength from an ensemble of reward models, and the losses built on it.

Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling"
(arXiv 2401.06080); docs/algorithms.md §3a-3b. The math of every loss lives in
:func:`ray_rlhf.algo.rm_loss.bradley_terry_loss`; this module only derives its per-pair
margin, label smoothing and label flips from the strength ``mu``.

Shapes: ``M`` reward models, ``P`` preference pairs.
"""

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

FlipMode = Literal["negative", "bottom_fraction"]
StrengthVariant = Literal[
    "plain", "flip", "margin", "flip_margin", "smooth_negative_margin", "smoothing"
]


class StrengthStats(NamedTuple):
    """Preference strength of each pair (Wang et al. 2024, docs/algorithms.md §3a).

    Attributes:
        mean: Strength ``mu`` ``(P,)``, the mean margin over the reward models.
        std: Spread ``s`` ``(P,)``, the standard deviation over the reward models.
    """

    mean: Tensor
    std: Tensor


class StrengthLossTerms(NamedTuple):
    """Per-pair inputs for ``bradley_terry_loss`` after flipping with :func:`apply_flip`.

    Attributes:
        margin: Margin inside the sigmoid ``(P,)``, in the direction of the (possibly
            flipped) label; zeros when the variant has no margin.
        label_smoothing: Smoothing ``alpha`` ``(P,)``; zeros when the variant has none.
        flip: True where the pair's label is to be swapped ``(P,)``.
    """

    margin: Tensor
    label_smoothing: Tensor
    flip: Tensor


def preference_strength(margins: Tensor) -> StrengthStats:
    """Mean and spread of each pair's margin over an ensemble of reward models.

    ``mu_i = mean_m d_im`` and ``s_i = std_m d_im`` (Wang et al. 2024, arXiv 2401.06080,
    section 3.1; docs/algorithms.md §3a). ``s`` is the sample standard deviation (Bessel's
    correction) for ``M >= 2``; with a single model (``M = 1``) it is 0, not NaN.

    Args:
        margins: ``d_im = r_m(x_i, y_w) - r_m(x_i, y_l)`` ``(M, P)``.

    Returns:
        :class:`StrengthStats` with ``mean`` and ``std``, both ``(P,)``.
    """
    correction = 1 if margins.shape[0] > 1 else 0
    return StrengthStats(margins.mean(dim=0), margins.std(dim=0, correction=correction))


def flip_mask(mu: Tensor, mode: FlipMode, fraction: float = 0.1) -> Tensor:
    """Pairs whose label to flip because the ensemble disagrees with it.

    ``"negative"``: pairs with ``mu < 0`` (``mu = 0`` is kept). ``"bottom_fraction"``: the
    ``floor(fraction * P)`` pairs with the lowest ``mu`` (Wang et al. 2024, section 3.2;
    docs/algorithms.md §3b), so at most that share is flipped and a small batch may flip none.
    Ties at the cut go to the lower index (stable sort).

    Args:
        mu: Strength ``(P,)`` from :func:`preference_strength`.
        mode: ``"negative"`` or ``"bottom_fraction"``.
        fraction: Share ``q`` in [0, 1] for ``"bottom_fraction"``.

    Returns:
        Boolean mask ``(P,)``, True where the label is flipped.

    Raises:
        ValueError: If ``fraction`` leaves [0, 1] or ``mode`` is unknown.
    """
    if mode == "negative":
        return mu < 0
    if mode != "bottom_fraction":
        raise ValueError(f"unknown flip mode {mode!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    count = math.floor(fraction * mu.numel() + 1e-9)  # guard 0.3 * 10 = 2.999...
    mask = torch.zeros(mu.shape, dtype=torch.bool, device=mu.device)
    mask[torch.argsort(mu, stable=True)[:count]] = True
    return mask


def apply_flip(chosen: Tensor, rejected: Tensor, flip: Tensor) -> tuple[Tensor, Tensor]:
    """Swap chosen and rejected scores where ``flip`` is True.

    Args:
        chosen: Scores of the chosen responses ``(P,)``.
        rejected: Scores of the rejected responses ``(P,)``.
        flip: True where the label is swapped ``(P,)``.

    Returns:
        ``(chosen, rejected)`` after the swap, both ``(P,)``.
    """
    return torch.where(flip, rejected, chosen), torch.where(flip, chosen, rejected)


def strength_loss_terms(
    mu: Tensor,
    variant: StrengthVariant,
    alpha: float = 0.1,
    flip_mode: FlipMode = "negative",
    fraction: float = 0.1,
) -> StrengthLossTerms:
    """Margin, label smoothing and flips for the paper's strength-based losses.

    Wang et al. 2024 (arXiv 2401.06080, section 3.2; docs/algorithms.md §3b). Feed the result as
    ``bradley_terry_loss(*apply_flip(chosen, rejected, t.flip), margin=t.margin,
    label_smoothing=t.label_smoothing)``.

    - ``"plain"``: no margin, no smoothing, no flip.
    - ``"flip"``: flip the pairs of :func:`flip_mask`.
    - ``"margin"``: adaptive margin ``mu`` inside the sigmoid, as in Llama 2.
    - ``"flip_margin"``: flip, then margin. The margin is the strength in the direction of
      the label actually trained on: ``-mu`` on flipped pairs, ``mu`` elsewhere (so
      ``|mu|`` when flipping ``mu < 0``).
    - ``"smooth_negative_margin"``: smoothing ``alpha`` only on pairs with ``mu < 0`` plus
      margin ``mu``; nothing is flipped.
    - ``"smoothing"``: uniform smoothing ``alpha`` on every pair.

    Args:
        mu: Strength ``(P,)`` from :func:`preference_strength`; used detached.
        variant: One of the six variants above.
        alpha: Label smoothing in [0, 1] (OPEN, default 0.1).
        flip_mode: ``mode`` of :func:`flip_mask` for the flip variants.
        fraction: ``fraction`` of :func:`flip_mask` for ``"bottom_fraction"``.

    Returns:
        :class:`StrengthLossTerms`, every field ``(P,)``.

    Raises:
        ValueError: If ``variant`` is unknown or ``alpha`` leaves [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    mu = mu.detach()
    zeros = torch.zeros_like(mu)
    no_flip = torch.zeros(mu.shape, dtype=torch.bool, device=mu.device)
    if variant == "plain":
        return StrengthLossTerms(zeros, zeros, no_flip)
    if variant in ("flip", "flip_margin"):
        flip = flip_mask(mu, flip_mode, fraction)
        margin = torch.where(flip, -mu, mu) if variant == "flip_margin" else zeros
        return StrengthLossTerms(margin, zeros, flip)
    if variant == "margin":
        return StrengthLossTerms(mu, zeros, no_flip)
    if variant == "smooth_negative_margin":
        return StrengthLossTerms(mu, torch.where(mu < 0, alpha, 0.0).to(mu.dtype), no_flip)
    if variant == "smoothing":
        return StrengthLossTerms(zeros, torch.full_like(mu, alpha), no_flip)
    raise ValueError(f"unknown strength variant {variant!r}")
