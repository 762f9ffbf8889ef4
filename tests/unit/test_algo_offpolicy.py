"""Truncated importance weights and the decoupled policy loss, on hand-computed tensors."""

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo import policy_loss, truncated_is_weights

T, F = True, False


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


# pi_old / mu per token = [1, 0.5, 3 (above the cap 2), junk on padding]
MU = f64([[-1.0, -1.0, -2.0, -1.0]])
OLD = MU + f64([[0.0, math.log(0.5), math.log(3.0), 50.0]])
MASK = torch.tensor([[T, T, T, F]])


def test_weights_are_the_ratio_truncated_at_the_cap_and_zero_on_padding() -> None:
    weights, stats = truncated_is_weights(OLD, MU, MASK, cap=2.0)
    assert_close(weights, torch.tensor([[1.0, 0.5, 2.0, 0.0]]))
    assert_close(stats.ratio_mean, torch.tensor(4.5 / 3))  # (1 + 0.5 + 3) / 3, untruncated
    assert_close(stats.ratio_max, torch.tensor(3.0))  # the padding's e^50 is ignored
    assert_close(stats.truncated_frac, torch.tensor(1 / 3))
    assert not weights.requires_grad


def test_on_policy_samples_get_weight_one() -> None:
    weights, stats = truncated_is_weights(OLD, OLD, MASK, cap=2.0)
    assert_close(weights, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert (stats.ratio_mean, stats.truncated_frac) == (1.0, 0.0)


def test_a_larger_cap_keeps_the_ratio_and_an_empty_mask_gives_zeros() -> None:
    weights, _ = truncated_is_weights(OLD, MU, MASK, cap=4.0)
    assert_close(weights[0, 2], torch.tensor(3.0))
    empty = torch.zeros_like(MASK)
    weights, stats = truncated_is_weights(OLD, MU, empty, cap=2.0)
    assert float(weights.abs().sum()) == 0.0
    assert (stats.ratio_mean, stats.ratio_max, stats.truncated_frac) == (0.0, 0.0, 0.0)


def test_a_cap_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_is_weights(OLD, MU, MASK, cap=0.5)


def test_weighted_policy_loss_and_its_gradient() -> None:
    """r = pi / pi_old = [1, 1.1, 0.5] (token 2 clipped), A = [1, -2, -1], w = [1, 0.5, 2].

    per token -w * min(r A, clip(r, 0.8, 1.2) A):
      t0: -1 * min(1, 1)          = -1
      t1: -0.5 * min(-2.2, -2.2)  = 1.1
      t2: -2 * min(-0.5, -0.8)    = 1.6   (clipped: no gradient)
    token-mean (-1 + 1.1 + 1.6) / 3 = 1.7 / 3; d/dlogprob = -w r A / 3 where unclipped.
    """
    weights, _ = truncated_is_weights(OLD, MU, MASK, cap=2.0)
    logprobs = (OLD + f64([[0.0, math.log(1.1), math.log(0.5), 0.0]])).requires_grad_(True)
    adv = f64([[1.0, -2.0, -1.0, 9.0]])
    loss, _ = policy_loss(logprobs, OLD, adv, MASK, clip_eps=0.2, is_weights=weights.double())
    assert_close(loss, f64(1.7 / 3))
    loss.backward()
    assert_close(logprobs.grad, f64([[-1.0 / 3, 0.5 * 1.1 * 2 / 3, 0.0, 0.0]]))
    # Without the weights the same tokens give the plain PPO loss (-1 + 2.2 + 0.8) / 3.
    plain, _ = policy_loss(logprobs.detach(), OLD, adv, MASK, clip_eps=0.2)
    assert_close(plain, f64(2.0 / 3))


def test_weights_carry_no_gradient_into_the_old_policy() -> None:
    old = OLD.clone().requires_grad_(True)
    weights, _ = truncated_is_weights(old, MU, MASK, cap=2.0)
    logprobs = OLD.clone().requires_grad_(True)
    loss, _ = policy_loss(logprobs, OLD, f64([[1.0, 1.0, 1.0, 0.0]]), MASK, 0.2, is_weights=weights)
    loss.backward()
    assert old.grad is None
