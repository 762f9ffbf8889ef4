"""Preference strength and its losses (Wang et al. 2024) against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo.rm_loss import bradley_terry_loss
from ray_rlhf.algo.strength import (
    StrengthVariant,
    apply_flip,
    flip_mask,
    preference_strength,
    strength_loss_terms,
)


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


MU = f64([2.0, -1.0, 0.5, -0.5])  # the 4-pair example
CHOSEN = f64([1.0, 0.0, 2.0, 0.0])
REJECTED = f64([0.0, 1.0, 0.0, 0.5])  # delta = [1, -1, 2, -0.5]


def test_preference_strength_hand_computed() -> None:
    margins = f64([[1.0, -2.0, 0.0, 0.0], [3.0, 0.0, 1.0, -1.0]])  # (M=2, P=4)
    stats = preference_strength(margins)
    assert_close(stats.mean, MU)
    # sample std of two values is |a - b| / sqrt(2)
    root2 = math.sqrt(2.0)
    assert_close(stats.std, f64([root2, root2, 1 / root2, 1 / root2]))


def test_preference_strength_single_model_has_zero_spread() -> None:
    stats = preference_strength(f64([[0.5, -1.0, 3.0]]))
    assert_close(stats.mean, f64([0.5, -1.0, 3.0]))
    assert_close(stats.std, torch.zeros(3, dtype=torch.float64))


def test_flip_mask_negative_keeps_zero() -> None:
    mask = flip_mask(f64([-0.1, 0.0, 2.0, -3.0]), "negative")
    assert mask.tolist() == [True, False, False, True]


def test_flip_mask_bottom_fraction_breaks_ties_by_index() -> None:
    mu = f64([0.3, -1.0, 0.3, 2.0, -1.0, 0.3, 5.0, 6.0, 7.0, 8.0])
    mask = flip_mask(mu, "bottom_fraction", fraction=0.3)  # 0.3 * 10 = 3 pairs
    assert torch.nonzero(mask).flatten().tolist() == [0, 1, 4]


@pytest.mark.parametrize(("fraction", "count"), [(0.1, 0), (0.25, 1), (0.7, 2), (1.0, 4)])
def test_flip_mask_bottom_fraction_rounds_down(fraction: float, count: int) -> None:
    mask = flip_mask(MU, "bottom_fraction", fraction=fraction)
    assert int(mask.sum()) == count
    lowest_first = [1, 3, 2, 0]  # MU ascending
    assert torch.nonzero(mask).flatten().tolist() == sorted(lowest_first[:count])


@pytest.mark.parametrize("fraction", [-0.1, 1.1])
def test_flip_mask_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        flip_mask(MU, "bottom_fraction", fraction=fraction)


def test_flip_mask_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        flip_mask(MU, "top")  # type: ignore[arg-type]


def test_apply_flip_swaps_only_flipped_pairs() -> None:
    chosen, rejected = apply_flip(CHOSEN, REJECTED, torch.tensor([False, True, False, True]))
    assert_close(chosen, f64([1.0, 1.0, 2.0, 0.5]))
    assert_close(rejected, f64([0.0, 0.0, 0.0, 0.0]))


NO = [False] * 4
NEG = [False, True, False, True]
EXPECTED_TERMS: dict[str, tuple[list[float], list[float], list[bool]]] = {
    "plain": ([0.0] * 4, [0.0] * 4, NO),
    "flip": ([0.0] * 4, [0.0] * 4, NEG),
    "margin": ([2.0, -1.0, 0.5, -0.5], [0.0] * 4, NO),
    "flip_margin": ([2.0, 1.0, 0.5, 0.5], [0.0] * 4, NEG),
    "smooth_negative_margin": ([2.0, -1.0, 0.5, -0.5], [0.0, 0.1, 0.0, 0.1], NO),
    "smoothing": ([0.0] * 4, [0.1] * 4, NO),
}


@pytest.mark.parametrize("variant", list(EXPECTED_TERMS))
def test_strength_loss_terms_per_variant(variant: StrengthVariant) -> None:
    margin, smoothing, flip = EXPECTED_TERMS[variant]
    terms = strength_loss_terms(MU, variant, alpha=0.1)
    assert_close(terms.margin, f64(margin))
    assert_close(terms.label_smoothing, f64(smoothing))
    assert terms.flip.tolist() == flip


def test_strength_loss_terms_are_detached_and_honour_flip_mode() -> None:
    mu = MU.clone().requires_grad_(True)
    terms = strength_loss_terms(mu, "flip_margin", flip_mode="bottom_fraction", fraction=0.25)
    assert terms.flip.tolist() == [False, True, False, False]  # only the lowest mu = -1
    assert_close(terms.margin, f64([2.0, 1.0, 0.5, -0.5]))
    assert not terms.margin.requires_grad


def test_flip_margin_loss_hand_computed() -> None:
    terms = strength_loss_terms(MU, "flip_margin")
    chosen, rejected = apply_flip(CHOSEN, REJECTED, terms.flip)
    loss, _ = bradley_terry_loss(
        chosen, rejected, margin=terms.margin, label_smoothing=terms.label_smoothing
    )
    # flipped delta = [1, 1, 2, 0.5]; minus margin [2, 1, 0.5, 0.5] = [-1, 0, 1.5, 0]
    expected = (softplus(1.0) + math.log(2.0) + softplus(-1.5) + math.log(2.0)) / 4
    assert_close(loss, f64(expected))


def test_smooth_negative_margin_loss_hand_computed() -> None:
    terms = strength_loss_terms(MU, "smooth_negative_margin", alpha=0.1)
    chosen, rejected = f64([1.0, 0.0, 2.0, 0.0]), torch.zeros(4, dtype=torch.float64)
    loss, _ = bradley_terry_loss(
        chosen, rejected, margin=terms.margin, label_smoothing=terms.label_smoothing
    )
    # z = delta - mu = [-1, 1, 1.5, 0.5]; pairs 1 and 3 (mu < 0) smoothed by 0.1:
    # -[(1 - a) log sigma(z) + a log sigma(-z)] = (1 - a) softplus(-z) + a softplus(z)
    pair1 = 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)
    pair3 = 0.9 * softplus(-0.5) + 0.1 * softplus(0.5)
    expected = (softplus(1.0) + pair1 + softplus(-1.5) + pair3) / 4
    assert_close(loss, f64(expected))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_strength_loss_terms_reject_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError):
        strength_loss_terms(MU, "smoothing", alpha=alpha)


def test_strength_loss_terms_reject_unknown_variant() -> None:
    with pytest.raises(ValueError):
        strength_loss_terms(MU, "focal")  # type: ignore[arg-type]
