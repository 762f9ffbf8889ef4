"""Advantage estimators: hand-computed cases and slow pure-Python references."""

import math
from collections.abc import Callable

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo import (
    broadcast_sequence_advantage,
    compute_gae,
    group_normalized_advantages,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)

T, F = True, False
SEEDS = [0, 1, 2, 3, 4]


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def random_token_batch(seed: int, holes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rewards, values (B, T) and a mask with trailing padding, or with holes too.

    Row 0 is always fully masked; padding positions hold large junk that must be ignored.
    """
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 9
    rewards = torch.randn(b, t, generator=gen, dtype=torch.float64)
    values = torch.randn(b, t, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    lengths[0] = 0
    mask = torch.arange(t) < lengths.unsqueeze(1)
    if holes:
        mask &= torch.rand(b, t, generator=gen) > 0.3
    rewards = torch.where(mask, rewards, 1e3)
    values = torch.where(mask, values, -1e3)
    return rewards, values, mask


def slow_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    """Textbook GAE per row on the subsequence of masked-in tokens, scattered back."""
    advantages = [[0.0] * rewards.shape[1] for _ in range(rewards.shape[0])]
    returns = [[0.0] * rewards.shape[1] for _ in range(rewards.shape[0])]
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
        r = [float(rewards[b, t]) for t in steps]
        v = [float(values[b, t]) for t in steps] + [0.0]  # V after the last token is 0
        running = 0.0
        for i in reversed(range(len(steps))):
            delta = r[i] + gamma * v[i + 1] - v[i]
            running = delta + gamma * lam * running
            advantages[b][steps[i]] = running
            returns[b][steps[i]] = running + v[i]
    return advantages, returns


def test_gae_hand_case_full_mask() -> None:
    rewards = f64([[0.0, 0.0, 1.0]])
    values = f64([[0.5, 0.6, 0.7]])
    mask = torch.tensor([[T, T, T]])
    # gamma = lam = 0.5:
    # t=2: delta = 1 - 0.7 = 0.3;                       A = 0.3
    # t=1: delta = 0 + 0.5 * 0.7 - 0.6 = -0.25;          A = -0.25 + 0.25 * 0.3 = -0.175
    # t=0: delta = 0 + 0.5 * 0.6 - 0.5 = -0.2;           A = -0.2 + 0.25 * -0.175 = -0.24375
    # returns = A + V = [0.25625, 0.425, 1.0]
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert_close(advantages, f64([[-0.24375, -0.175, 0.3]]))
    assert_close(returns, f64([[0.25625, 0.425, 1.0]]))


def test_gae_trailing_padding_treats_later_values_as_zero() -> None:
    rewards = f64([[0.0, 1.0, 5.0]])
    values = f64([[0.5, 0.6, 9.0]])
    mask = torch.tensor([[T, T, F]])
    # gamma = lam = 1, the padded V=9 and r=5 are ignored:
    # t=1: A = 1 + 0 - 0.6 = 0.4;  t=0: A = 0 + 0.6 - 0.5 + 0.4 = 0.5;  returns = [1, 1, 0]
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert_close(advantages, f64([[0.5, 0.4, 0.0]]))
    assert_close(returns, f64([[1.0, 1.0, 0.0]]))


def test_gae_skips_a_masked_hole() -> None:
    rewards = f64([[0.0, 7.0, 1.0]])
    values = f64([[0.5, 9.0, 0.7]])
    mask = torch.tensor([[T, F, T]])
    # gamma = 0.5, lam = 1; the hole at t=1 is skipped, so t=0 bootstraps from t=2:
    # t=2: A = 1 - 0.7 = 0.3;  t=0: A = 0 + 0.5 * 0.7 - 0.5 + 0.5 * 0.3 = 0.0
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert_close(advantages, f64([[0.0, 0.0, 0.3]]))
    assert_close(returns, f64([[0.5, 0.0, 1.0]]))


def test_gae_all_masked_row_is_zero() -> None:
    rewards = f64([[1.0, 2.0], [3.0, 4.0]])
    values = f64([[0.1, 0.2], [0.3, 0.4]])
    mask = torch.tensor([[F, F], [T, T]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 1: A_1 = 4 - 0.4 = 3.6;  A_0 = 3 + 0.4 - 0.3 + 3.6 = 6.7
    assert_close(advantages, f64([[0.0, 0.0], [6.7, 3.6]]))
    assert_close(returns, f64([[0.0, 0.0], [7.0, 4.0]]))


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_slow_reference(seed: int, holes: bool) -> None:
    rewards, values, mask = random_token_batch(seed, holes)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.97, lam=0.9)
    want_advantages, want_returns = slow_gae(rewards, values, mask, gamma=0.97, lam=0.9)
    assert_close(advantages, f64(want_advantages), atol=1e-6, rtol=0)
    assert_close(returns, f64(want_returns), atol=1e-6, rtol=0)


def test_rloo_hand_case() -> None:
    scores = f64([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])
    # group (1, 2, 3), sum 6: baselines (5/2, 4/2, 3/2) -> (-1.5, 0, 1.5)
    # group (10, 10, 40), sum 60: baselines (50/2, 50/2, 20/2) -> (-15, -15, 30)
    assert_close(rloo_advantages(scores, 3), f64([-1.5, 0.0, 1.5, -15.0, -15.0, 30.0]))


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_matches_slow_reference(seed: int) -> None:
    k = 4
    scores = torch.randn(5 * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = []
    for i, s in enumerate(scores.tolist()):
        group = scores[(i // k) * k : (i // k + 1) * k].tolist()
        others = [x for j, x in enumerate(group) if j != i % k]
        want.append(s - sum(others) / len(others))
    assert_close(rloo_advantages(scores, k), f64(want), atol=1e-6, rtol=0)


def test_group_normalized_hand_case() -> None:
    scores = f64([1.0, 3.0, 2.0, 2.0])
    # group (1, 3): mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt 2 -> (-1/sqrt2, 1/sqrt2)
    # group (2, 2): std 0 -> 0 / (0 + eps) = 0
    s = 1 / math.sqrt(2.0)
    assert_close(group_normalized_advantages(scores, 2, eps=1e-12), f64([-s, s, 0.0, 0.0]))
    assert_close(
        group_normalized_advantages(scores, 2, scale_by_std=False), f64([-1.0, 1.0, 0.0, 0.0])
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_group_normalized_matches_slow_reference(seed: int) -> None:
    k, eps = 3, 1e-6
    scores = torch.randn(4 * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = []
    for i, s in enumerate(scores.tolist()):
        group = scores[(i // k) * k : (i // k + 1) * k].tolist()
        mean = sum(group) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (k - 1))
        want.append((s - mean) / (std + eps))
    assert_close(group_normalized_advantages(scores, k, eps=eps), f64(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", [rloo_advantages, group_normalized_advantages])
def test_group_estimators_reject_bad_group_size(
    estimator: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    scores = f64([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="does not divide"):
        estimator(scores, 2)
    with pytest.raises(ValueError, match=">= 2"):
        estimator(scores, 1)
    with pytest.raises(ValueError, match="1-D"):
        estimator(scores.view(5, 1), 5)


def test_reinforce_pp_returns_hand_case() -> None:
    rewards = f64([[0.1, -0.2, 1.0, 9.0]])
    mask = torch.tensor([[T, T, T, F]])
    # gamma = 0.5: G_2 = 1;  G_1 = -0.2 + 0.5 * 1 = 0.3;  G_0 = 0.1 + 0.5 * 0.3 = 0.25
    assert_close(reinforce_pp_returns(rewards, mask, gamma=0.5), f64([[0.25, 0.3, 1.0, 0.0]]))


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_returns_matches_slow_reference(seed: int, holes: bool) -> None:
    rewards, _, mask = random_token_batch(seed, holes)
    gamma = 0.95
    want = [[0.0] * rewards.shape[1] for _ in range(rewards.shape[0])]
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
        for i, t in enumerate(steps):
            want[b][t] = sum(gamma**j * float(rewards[b, u]) for j, u in enumerate(steps[i:]))
    got = reinforce_pp_returns(rewards, mask, gamma)
    assert_close(got, f64(want), atol=1e-6, rtol=0)


def test_reinforce_pp_advantages_whiten_over_the_whole_batch() -> None:
    returns = f64([[1.0, 3.0], [5.0, 99.0]])
    mask = torch.tensor([[T, T], [T, F]])
    # masked values 1, 3, 5: mean 3, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    assert_close(reinforce_pp_advantages(returns, mask), f64([[-1.0, 0.0], [1.0, 0.0]]))


def test_broadcast_sequence_advantage() -> None:
    mask = torch.tensor([[T, T, F], [F, T, T], [F, F, F]])
    got = broadcast_sequence_advantage(f64([2.0, -1.0, 5.0]), mask)
    assert_close(got, f64([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
