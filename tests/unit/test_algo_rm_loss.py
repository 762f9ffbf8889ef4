"""Bradley-Terry reward-model loss variants against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo import bradley_terry_loss, group_pair_agreement, preference_accuracy


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


CHOSEN = f64([2.0, 0.0])
REJECTED = f64([0.0, 1.0])  # delta = [2, -1]


def test_plain_bt_loss_and_stats() -> None:
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED)
    # -log sigma(d) = log(1 + e^-d): (log(1 + e^-2) + log(1 + e^1)) / 2
    assert_close(loss, f64((softplus(-2.0) + softplus(1.0)) / 2))
    assert_close(stats.accuracy, f64(0.5))  # only the first pair has delta > 0
    assert_close(stats.mean_margin, f64(0.5))  # (2 - 1) / 2


def test_bt_margin_sits_inside_the_sigmoid() -> None:
    loss, stats = bradley_terry_loss(CHOSEN, REJECTED, margin=f64([1.0, 1.0]))
    # delta - m = [1, -2]: (log(1 + e^-1) + log(1 + e^2)) / 2
    assert_close(loss, f64((softplus(-1.0) + softplus(2.0)) / 2))
    assert_close(stats.mean_margin, f64(0.5))  # the stat reports delta, not delta - m
    scalar_loss, _ = bradley_terry_loss(CHOSEN, REJECTED, margin=1.0)
    assert_close(scalar_loss, loss)


def test_bt_label_smoothing() -> None:
    loss, _ = bradley_terry_loss(CHOSEN, REJECTED, label_smoothing=0.1)
    # pair (d): 0.9 * log(1 + e^-d) + 0.1 * log(1 + e^d)
    pair0 = 0.9 * softplus(-2.0) + 0.1 * softplus(2.0)
    pair1 = 0.9 * softplus(1.0) + 0.1 * softplus(-1.0)
    assert_close(loss, f64((pair0 + pair1) / 2))


def test_bt_per_pair_label_smoothing() -> None:
    loss, _ = bradley_terry_loss(CHOSEN, REJECTED, label_smoothing=f64([0.0, 0.5]))
    # pair 0 plain; pair 1 symmetric: 0.5 * (log(1 + e^1) + log(1 + e^-1))
    pair1 = 0.5 * (softplus(1.0) + softplus(-1.0))
    assert_close(loss, f64((softplus(-2.0) + pair1) / 2))


def test_bt_weights_are_normalized_and_detached() -> None:
    weights = f64([3.0, 1.0]).requires_grad_(True)
    chosen = CHOSEN.clone().requires_grad_(True)
    loss, _ = bradley_terry_loss(chosen, REJECTED, weights=weights)
    # normalized weights [0.75, 0.25]
    assert_close(loss, f64(0.75 * softplus(-2.0) + 0.25 * softplus(1.0)))
    loss.backward()
    assert weights.grad is None
    # d/d chosen of -w log sigma(d) = -w sigma(-d)
    sig = 1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-1.0))
    assert_close(chosen.grad, f64([-0.75 * sig[0], -0.25 * sig[1]]))


def test_bt_is_stable_for_large_margins() -> None:
    loss, _ = bradley_terry_loss(f64([-1000.0]), f64([0.0]))
    assert_close(loss, f64(1000.0))  # log(1 + e^1000) = 1000 to double precision


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bt_rejects_label_smoothing_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(CHOSEN, REJECTED, label_smoothing=alpha)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0]])
def test_bt_rejects_negative_or_zero_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        bradley_terry_loss(CHOSEN, REJECTED, weights=f64(weights))


def test_preference_accuracy_counts_ties_as_wrong() -> None:
    # pairs: 1 > 0 right, 1 = 1 tie, 2 < 3 wrong -> 1/3
    assert_close(preference_accuracy(f64([1.0, 1.0, 2.0]), f64([0.0, 1.0, 3.0])), f64(1 / 3))


def test_group_pair_agreement_counts_pairs_within_prompts_with_different_truth() -> None:
    scores = f64([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    truth = f64([[1.0, 0.0, 0.0], [0.5, 0.2, 0.9]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    # Prompt 0: (0,1) agrees, (0,2) agrees, (1,2) has equal truth (not counted).
    # Prompt 1: (0,1) is a score tie (disagrees); response 2 is padding.
    assert group_pair_agreement(scores, truth, valid) == (2, 3)
    assert group_pair_agreement(-scores, truth, valid) == (0, 3)
    with pytest.raises(ValueError, match="one shape"):
        group_pair_agreement(scores[0], truth[0], valid[0])
