"""Segment-level rewards (Yin et al. 2025): segmentation, normalizer fit, densification."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from ray_rlhf.algo.segments import (
    LocationNormalizer,
    densify_segment_rewards,
    fit_location_normalizer,
    huber_line_fit,
    normalize_segment_rewards,
    segment_ends,
    segment_lengths,
    segment_mean_scores,
    segment_positions,
)

# Two rows, T = 8. Row 0: prompt at 0-1, response at 2-6 with EOS at 6, padding at 7.
# Row 1: prompt at 0-2, response at 3-7, unfinished (no EOS, cut at the length limit).
RESPONSE = torch.tensor(
    [
        [0, 0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 1, 1],
    ],
    dtype=torch.bool,
)
FINISHED = torch.tensor([True, False])
ENTROPY = torch.tensor(
    [
        [9.0, 9.0, 0.5, 2.5, 1.0, 3.0, 9.0, 9.0],  # prompt / EOS / padding entries ignored
        [9.0, 9.0, 9.0, 2.1, 0.1, 0.2, 2.9, 0.3],
    ]
)


def _positions(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def test_segment_ends_threshold_eos_and_padding():
    ends = segment_ends(ENTROPY, RESPONSE, FINISHED, threshold=2.0)
    # Row 0: H > 2 after tokens 3 and 5; token 5 is also the last non-EOS token; the EOS
    # (6) and the padding (7) are in no segment although their entropies are high.
    # Row 1: H > 2 after 3 and 6; unfinished, so the last response token (7) ends a segment.
    assert _positions(ends) == [[3, 5], [3, 6, 7]]


def test_threshold_zero_is_token_level_and_inf_is_bandit():
    token = segment_ends(ENTROPY, RESPONSE, FINISHED, threshold=0.0)
    assert _positions(token) == [[2, 3, 4, 5], [3, 4, 5, 6, 7]]
    zero_entropy = torch.zeros_like(ENTROPY)  # an underflowed entropy still splits at c = 0
    assert torch.equal(segment_ends(zero_entropy, RESPONSE, FINISHED, 0.0), token)
    bandit = segment_ends(ENTROPY, RESPONSE, FINISHED, threshold=math.inf)
    assert _positions(bandit) == [[5], [7]]


def test_eos_only_response_and_empty_row():
    response = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    ends = segment_ends(torch.ones(2, 3), response, torch.tensor([True, False]), 2.0)
    assert _positions(ends) == [[1], []]  # EOS alone is one segment; no response: none
    assert segment_mean_scores(torch.ones(2, 3), ends).tolist() == [1.0, 0.0]


def test_positions_scores_and_lengths():
    ends = segment_ends(ENTROPY, RESPONSE, FINISHED, threshold=2.0)
    p = segment_positions(ends)
    assert p[0, [3, 5]].tolist() == [0.5, 1.0]
    assert p[1, [3, 6, 7]].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert float(p.sum()) == pytest.approx(1.5 + 2.0)
    values = torch.arange(16, dtype=torch.float32).reshape(2, 8)
    assert segment_mean_scores(values, ends).tolist() == pytest.approx(
        [(3 + 5) / 2, (11 + 14 + 15) / 3]
    )
    # Row 0 segments: [2, 3], [4, 5]; row 1: [3], [4, 5, 6], [7].
    assert segment_lengths(ends, RESPONSE).tolist() == pytest.approx([2.0, 5 / 3])


def test_densify_sums_back_to_segment_rewards_and_is_zero_outside():
    ends = segment_ends(ENTROPY, RESPONSE, FINISHED, threshold=2.0)
    rewards = torch.zeros(2, 8)
    rewards[0, 3], rewards[0, 5] = 1.0, -3.0
    rewards[1, 3], rewards[1, 6], rewards[1, 7] = 2.0, 0.6, -1.0
    dense = densify_segment_rewards(rewards, ends, RESPONSE)
    expected = torch.tensor(
        [
            [0, 0, 0.5, 0.5, -1.5, -1.5, 0, 0],
            [0, 0, 0, 2.0, 0.2, 0.2, 0.2, -1.0],
        ]
    )
    assert torch.allclose(dense, expected)
    for row, spans in enumerate([[(2, 4), (4, 6)], [(3, 4), (4, 7), (7, 8)]]):
        for lo, hi in spans:
            assert float(dense[row, lo:hi].sum()) == pytest.approx(float(rewards[row, hi - 1]))


def test_densify_random_rows_preserve_totals():
    gen = torch.Generator().manual_seed(0)
    n, t = 16, 12
    lengths = torch.randint(1, 9, (n,), generator=gen)
    starts = torch.randint(0, 4, (n,), generator=gen)
    pos = torch.arange(t).expand(n, t)
    response = (pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])
    finished = torch.rand(n, generator=gen) < 0.5
    ends = segment_ends(torch.rand(n, t, generator=gen) * 3, response, finished, 1.5)
    rewards = torch.randn(n, t, generator=gen) * ends
    dense = densify_segment_rewards(rewards, ends, response)
    assert torch.allclose(dense.sum(dim=1), rewards.sum(dim=1), atol=1e-5)
    assert not dense[~response].any()


def _synthetic(n: int, a: float, b: float, noise: float, outliers: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=gen) * 4 - 3
    y = a * x + b + noise * torch.randn(n, generator=gen)
    bad = torch.rand(n, generator=gen) < outliers
    y[bad] += 20 + 10 * torch.rand(int(bad.sum()), generator=gen)  # one-sided gross errors
    return x, y


def test_huber_fit_recovers_line_despite_outliers():
    x, y = _synthetic(2000, a=0.7, b=-1.2, noise=0.3, outliers=0.1, seed=1)
    fit = huber_line_fit(x, y)
    assert fit.slope == pytest.approx(0.7, abs=0.05)
    assert fit.intercept == pytest.approx(-1.2, abs=0.08)
    ols = huber_line_fit(x, y, epsilon=1e9)  # no down-weighting: least squares, pulled away
    assert abs(ols.intercept + 1.2) > 1.0


def test_normalizer_recovers_mu_and_sigma_with_outliers():
    gen = torch.Generator().manual_seed(0)
    k_max = torch.randint(1, 9, (4000,), generator=gen)
    p = (torch.rand(4000, generator=gen) * k_max).floor().add(1) / k_max  # k / K in (0, 1]
    log_p = p.log()
    mu = 0.5 * log_p + 1.0
    sigma = -0.3 * log_p + 0.4  # spread grows toward the start of the response
    r = mu + sigma * torch.randn(4000, generator=gen)
    bad = torch.rand(4000, generator=gen) < 0.05
    r[bad] = 50.0  # 5% one-sided gross outliers
    fit = fit_location_normalizer(r, p)
    # Least squares would put the intercept near 1 + 0.05 * 49 = 3.5; Huber keeps a small
    # bias from the one-sided contamination.
    assert fit.mu_slope == pytest.approx(0.5, abs=0.05)
    assert fit.mu_intercept == pytest.approx(1.0, abs=0.06)
    assert fit.sigma_slope == pytest.approx(-0.3, abs=0.05)
    assert fit.sigma_intercept == pytest.approx(0.4, abs=0.05)


def test_normalize_segment_rewards():
    ends = torch.tensor([[0, 1, 0, 1]], dtype=torch.bool)  # p = 0.5, 1.0
    values = torch.tensor([[7.0, 2.0, 7.0, 3.0]])
    norm = LocationNormalizer(mu_slope=1.0, mu_intercept=1.0, sigma_slope=0.0, sigma_intercept=2.0)
    out = normalize_segment_rewards(values, ends, norm, min_std=0.1)
    expected_first = (2.0 - (math.log(0.5) + 1.0)) / 2.0
    assert out.tolist()[0] == pytest.approx([0.0, expected_first, 0.0, (3.0 - 1.0) / 2.0])
    floored = LocationNormalizer(0.0, 0.0, 0.0, -1.0)  # sigma below the floor
    assert normalize_segment_rewards(values, ends, floored, 0.5)[0, 3] == pytest.approx(6.0)


def test_algo_segments_is_pure():
    probe = (
        "import json, sys; import ray_rlhf.algo.segments; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'vllm', 'deepspeed', 'transformers', 'datasets'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
