"""Prompt-free / prompt-related decomposition (Mao et al. 2025) against hand-computed values."""

import math
from itertools import pairwise

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo.decompose import (
    cross_prompt_gaps,
    in_batch_alternative_indices,
    prioritized_weights,
    prompt_free_gap_bisection,
    prompt_related_gap,
)
from ray_rlhf.algo.rm_loss import bradley_terry_loss


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_cross_prompt_gaps_hand_computed_uniform() -> None:
    gaps = f64([[0.0, 2.0], [1.0, -1.0]])
    out = cross_prompt_gaps(gaps)
    p0 = (0.5 + sigmoid(2.0)) / 2
    assert_close(out.mean_prob, f64([p0, 0.5]))  # sigma(1) + sigma(-1) = 1
    assert_close(out.prompt_free_gap, f64([logit(p0), 0.0]))


def test_cross_prompt_gaps_weights_are_normalized_per_row() -> None:
    gaps = f64([[0.0, 2.0]])
    out = cross_prompt_gaps(gaps, weights=f64([[3.0, 1.0]]))
    p = 0.75 * 0.5 + 0.25 * sigmoid(2.0)
    assert_close(out.mean_prob, f64([p]))
    assert_close(out.prompt_free_gap, f64([logit(p)]))


def test_cross_prompt_gaps_clamps_saturated_probabilities() -> None:
    out = cross_prompt_gaps(f64([[100.0], [-100.0]]), eps=1e-6)
    assert_close(out.prompt_free_gap, f64([logit(1 - 1e-6), logit(1e-6)]))


def test_prompt_blind_reward_is_all_prompt_free() -> None:
    full_gap = f64([1.5, -0.5, 3.0])
    gaps = full_gap[:, None].expand(3, 4)  # same gap under every prompt
    free = cross_prompt_gaps(gaps).prompt_free_gap
    assert_close(free, full_gap)
    assert_close(prompt_related_gap(full_gap, free), torch.zeros(3, dtype=torch.float64))


def test_response_blind_reward_has_no_prompt_free_gap() -> None:
    gaps = torch.zeros(3, 4, dtype=torch.float64)
    full_gap = f64([0.7, -1.2, 0.0])
    free = cross_prompt_gaps(gaps).prompt_free_gap
    assert_close(free, torch.zeros(3, dtype=torch.float64))
    assert_close(prompt_related_gap(full_gap, free), full_gap)
    assert_close(prompt_free_gap_bisection(gaps), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "weights",
    [
        f64([[1.0, 1.0], [1.0, 1.0]]),  # wrong shape
        f64([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),  # a zero row
        f64([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]]),  # a negative entry
    ],
)
def test_cross_prompt_gaps_rejects_bad_weights(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        cross_prompt_gaps(torch.zeros(2, 3, dtype=torch.float64), weights=weights)


def test_bisection_matches_logit_with_one_prompt() -> None:
    gaps = f64([[1.3], [-2.0], [0.0]])
    assert_close(prompt_free_gap_bisection(gaps), cross_prompt_gaps(gaps).prompt_free_gap)


def test_bisection_solves_its_condition() -> None:
    gaps = f64([[0.0, 2.0, -1.0], [3.0, 1.0, 1.0]])
    weights = f64([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    shift = prompt_free_gap_bisection(gaps, weights, iters=60)
    w = weights / weights.sum(dim=-1, keepdim=True)
    mean_prob = (w * torch.sigmoid(gaps - shift[:, None])).sum(dim=-1)
    assert_close(mean_prob, f64([0.5, 0.5]))
    # symmetric gaps around 1 give a shift of exactly 1
    assert_close(prompt_free_gap_bisection(f64([[0.0, 2.0]])), f64([1.0]))


def test_bisection_is_monotone_in_the_gaps() -> None:
    base = f64([[0.0, 2.0, -1.0]])
    shifts = [prompt_free_gap_bisection(base + f64([[0.0, step, 0.0]])) for step in range(4)]
    assert all(bool(a < b) for a, b in pairwise(shifts))


def test_bisection_is_detached() -> None:
    gaps = f64([[0.0, 2.0]]).requires_grad_(True)
    assert not prompt_free_gap_bisection(gaps).requires_grad


def test_alternative_indices_never_hit_the_own_prompt() -> None:
    generator = torch.Generator().manual_seed(0)
    idx = in_batch_alternative_indices(5, 200, generator)
    assert idx.shape == (5, 200) and idx.dtype == torch.long
    assert not bool((idx == torch.arange(5)[:, None]).any())
    for row in range(5):  # every other prompt shows up
        assert set(idx[row].tolist()) == set(range(5)) - {row}


def test_alternative_indices_two_prompts_pick_the_other() -> None:
    idx = in_batch_alternative_indices(2, 3, torch.Generator().manual_seed(1))
    assert idx.tolist() == [[1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(("num_prompts", "m"), [(1, 2), (0, 1), (3, 0)])
def test_alternative_indices_reject_bad_sizes(num_prompts: int, m: int) -> None:
    with pytest.raises(ValueError):
        in_batch_alternative_indices(num_prompts, m)


def test_prioritized_weights_hand_computed() -> None:
    free = f64([0.0, math.log(3.0)])  # softmax(-free) = [3/4, 1/4]
    w = prioritized_weights(free, tau=1.0, alpha=0.5)
    assert_close(w, f64([0.5 * 0.75 + 0.25, 0.5 * 0.25 + 0.25]))
    # tau = 2 halves the logits: softmax([0, -log 3 / 2]) = [1, 1/sqrt 3] / (1 + 1/sqrt 3)
    w2 = prioritized_weights(free, tau=2.0, alpha=1.0)
    z = 1.0 + 1.0 / math.sqrt(3.0)
    assert_close(w2, f64([1.0 / z, 1.0 / math.sqrt(3.0) / z]))


def test_prioritized_weights_sum_to_one_detached_and_down_weight_explained_pairs() -> None:
    free = f64([3.0, 0.0, -1.0, 0.5]).requires_grad_(True)
    w = prioritized_weights(free, alpha=0.7)
    assert_close(w.sum(), f64(1.0))
    assert not w.requires_grad
    assert bool(w[0] == w.min()) and bool(w[2] == w.max())
    assert_close(prioritized_weights(free, alpha=0.0), torch.full((4,), 0.25).double())


def test_prioritized_weights_follow_the_label_direction() -> None:
    free = f64([2.0, 2.0])
    w = prioritized_weights(free, labels_direction=torch.tensor([1, -1]), alpha=1.0)
    assert bool(w[0] < w[1])  # the pair whose label goes against dr2 gets priority


@pytest.mark.parametrize(("tau", "alpha"), [(0.0, 0.5), (-1.0, 0.5), (1.0, 1.5), (1.0, -0.1)])
def test_prioritized_weights_reject_bad_arguments(tau: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        prioritized_weights(f64([0.0, 1.0]), tau=tau, alpha=alpha)


def test_prioritized_loss_is_weighted_bradley_terry() -> None:
    chosen, rejected = f64([2.0, 0.0]), f64([0.0, 1.0])
    w = prioritized_weights(f64([0.0, math.log(3.0)]), alpha=1.0)  # [3/4, 1/4]
    loss, _ = bradley_terry_loss(chosen, rejected, weights=w)
    expected = 0.75 * math.log1p(math.exp(-2.0)) + 0.25 * math.log1p(math.exp(1.0))
    assert_close(loss, f64(expected))
