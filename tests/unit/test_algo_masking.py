"""Hand-computed checks of the masked reductions and logit helpers."""

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo import (
    entropy_from_logits,
    gather_last,
    logprobs_from_logits,
    masked_entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

T, F = True, False


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


X = f64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[T, T, F], [F, T, T]])  # selects 1, 2, 5, 6


def test_masked_sum_over_all_and_per_dim() -> None:
    assert_close(masked_sum(X, MASK), f64(14.0))  # 1 + 2 + 5 + 6
    assert_close(masked_sum(X, MASK, dim=1), f64([3.0, 11.0]))  # [1 + 2, 5 + 6]
    assert_close(masked_sum(X, MASK, dim=0), f64([1.0, 7.0, 6.0]))  # [1, 2 + 5, 6]


def test_masked_mean_over_all_and_per_row() -> None:
    assert_close(masked_mean(X, MASK), f64(3.5))  # 14 / 4
    assert_close(masked_mean(X, MASK, dim=1), f64([1.5, 5.5]))  # [3 / 2, 11 / 2]


def test_masked_mean_of_all_masked_row_is_zero_and_ignores_nan_padding() -> None:
    x = f64([[1.0, float("nan")], [float("inf"), 7.0]])
    mask = torch.tensor([[T, F], [F, F]])
    assert_close(masked_mean(x, mask, dim=1), f64([1.0, 0.0]))
    assert_close(masked_mean(x, mask), f64(1.0))


def test_masked_var_biased_and_unbiased() -> None:
    # values 1, 2, 5, 6; mean 3.5; squared deviations 6.25 + 2.25 + 2.25 + 6.25 = 17
    assert_close(masked_var(X, MASK, unbiased=False), f64(17.0 / 4))
    assert_close(masked_var(X, MASK), f64(17.0 / 3))


def test_masked_var_rejects_too_few_positions() -> None:
    one = torch.tensor([[T, F, F], [F, F, F]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, one)
    assert_close(masked_var(X, one, unbiased=False), f64(0.0))
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(X, torch.zeros_like(MASK), unbiased=False)


def test_masked_whiten_standardizes_masked_positions_and_zeroes_the_rest() -> None:
    x = f64([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[T, T, F]])
    # mean 2, unbiased var ((1 - 2)^2 + (3 - 2)^2) / 1 = 2
    s = 1 / math.sqrt(2.0)
    assert_close(masked_whiten(x, mask), f64([[-s, s, 0.0]]))
    assert_close(masked_whiten(x, mask, shift_mean=False), f64([[2 - s, 2 + s, 0.0]]))


def test_gather_last_picks_last_true_position() -> None:
    x = f64([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    mask = torch.tensor([[T, T, F, F], [F, T, F, T], [F, F, F, F]])
    # row 0: last True at t=1 -> 2; row 1: t=3 -> 8; row 2: none -> 0
    assert_close(gather_last(x, mask), f64([2.0, 8.0, 0.0]))


# p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2. The +3 shift must not matter.
PEAKED = [math.log(0.5) + 3, math.log(0.25) + 3, math.log(0.25) + 3]


def test_entropy_from_logits() -> None:
    logits = f64([[PEAKED, [0.0, 0.0, 0.0]]])  # (1, 2, 3); uniform over 3 -> ln 3
    assert_close(entropy_from_logits(logits), f64([[1.5 * math.log(2), math.log(3)]]))


def test_masked_entropy_from_logits_computes_only_masked_positions() -> None:
    logits = f64([[PEAKED, [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], PEAKED]])  # (2, 2, 3)
    mask = torch.tensor([[T, F], [F, T]])
    expected = f64([[1.5 * math.log(2), 0.0], [0.0, 1.5 * math.log(2)]])
    assert_close(masked_entropy_from_logits(logits, mask), expected)


def test_logprobs_from_logits_hand_case() -> None:
    logits = f64([[PEAKED, PEAKED]])  # (1, 2, 3)
    labels = torch.tensor([[0, 2]])
    assert_close(logprobs_from_logits(logits, labels), f64([[math.log(0.5), math.log(0.25)]]))


def test_logprobs_from_logits_matches_log_softmax_and_its_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    got = logprobs_from_logits(logits, labels)
    want = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(got, want)
    (grad_got,) = torch.autograd.grad(got.sum(), logits)
    (grad_want,) = torch.autograd.grad(want.sum(), logits)
    assert_close(grad_got, grad_want)
