"""KL estimators, the KL reward penalty and the KL coefficient controllers."""

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo import (
    AdaptiveKLController,
    FixedKLController,
    KLEstimator,
    apply_kl_penalty,
    kl_estimate,
)

T, F = True, False
LN2 = math.log(2.0)


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


# One token with p = 0.5 under the policy and q = 0.25 under the reference: log p/q = ln 2.
LOGP = f64([[math.log(0.5)]])
LOGQ = f64([[math.log(0.25)]])


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("k1", LN2),  # log p - log q
        ("k2", 0.5 * LN2**2),  # (log p - log q)^2 / 2
        ("k3", 0.5 + LN2 - 1.0),  # q/p - log(q/p) - 1 = 0.5 - (-ln 2) - 1
    ],
)
def test_kl_estimators_hand_case(estimator: KLEstimator, expected: float) -> None:
    assert_close(kl_estimate(LOGP, LOGQ, estimator), f64([[expected]]))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_exact_kl(estimator: KLEstimator) -> None:
    # Exact expectation over a 3-token vocabulary: sum_y p(y) k(y) = KL(p || q)
    # = 0.5 ln(0.5/0.2) + 0.3 ln(0.3/0.3) + 0.2 ln(0.2/0.5).
    p = f64([0.5, 0.3, 0.2])
    q = f64([0.2, 0.3, 0.5])
    exact = 0.5 * math.log(2.5) + 0.2 * math.log(0.4)
    per_token = kl_estimate(p.log().unsqueeze(0), q.log().unsqueeze(0), estimator)
    assert_close((p * per_token.squeeze(0)).sum(), f64(exact))


def test_k2_and_k3_are_nonnegative_per_token() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    logq = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    assert (kl_estimate(logp, logq, "k2") >= 0).all()
    assert (kl_estimate(logp, logq, "k3") >= 0).all()


def test_clamp_bounds_the_log_ratio_before_the_estimator() -> None:
    logp = f64([[0.0, -50.0]])
    logq = f64([[-50.0, 0.0]])  # log ratios +50 and -50
    got = kl_estimate(logp, logq, "k3", clamp=10.0)
    # clipped to +10: e^-10 + 10 - 1;  clipped to -10: e^10 - 10 - 1
    assert_close(got, f64([[math.exp(-10) + 9.0, math.exp(10) - 11.0]]))
    assert_close(kl_estimate(logp, logq, "k1", clamp=10.0), f64([[10.0, -10.0]]))


def test_unknown_estimator_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(LOGP, LOGQ, "k4")  # type: ignore[arg-type]


def test_apply_kl_penalty_subtracts_on_mask_only() -> None:
    rewards = f64([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    kl = f64([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[T, T, T], [T, T, F]])
    # coef 0.5: r - 0.5 * kl -> [[-0.05, -0.1, 0.85], [-0.2, 1.75, pad -> 0]]
    got = apply_kl_penalty(rewards, kl, coef=0.5, mask=mask)
    assert_close(got, f64([[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0]]))


def test_adaptive_kl_raises_coef_when_kl_is_above_target() -> None:
    controller = AdaptiveKLController(init_coef=0.1, target_kl=6.0, horizon=10_000)
    controller.update(current_kl=12.0, n_steps=256)
    # error = clip(12 / 6 - 1, -0.2, 0.2) = 0.2;  0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert controller.value == pytest.approx(0.100512)


def test_adaptive_kl_lowers_coef_when_kl_is_below_target() -> None:
    controller = AdaptiveKLController(init_coef=0.1, target_kl=6.0, horizon=10_000)
    controller.update(current_kl=3.0, n_steps=256)
    # error = clip(3 / 6 - 1, -0.2, 0.2) = -0.2;  0.1 * (1 - 0.2 * 256 / 10000) = 0.099488
    assert controller.value == pytest.approx(0.099488)


def test_adaptive_kl_small_error_is_proportional() -> None:
    controller = AdaptiveKLController(init_coef=0.1, target_kl=6.0, horizon=1000)
    controller.update(current_kl=6.6, n_steps=100)
    # error = 6.6 / 6 - 1 = 0.1 (inside the clip);  0.1 * (1 + 0.1 * 100 / 1000) = 0.101
    assert controller.value == pytest.approx(0.101)


def test_adaptive_kl_rejects_nonpositive_target_or_horizon() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(init_coef=0.1, target_kl=0.0, horizon=100)
    with pytest.raises(ValueError):
        AdaptiveKLController(init_coef=0.1, target_kl=1.0, horizon=0)


def test_fixed_kl_controller_never_moves() -> None:
    controller = FixedKLController(coef=0.05)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05
