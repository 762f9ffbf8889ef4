"""Segment-level rewards: entropy segmentation, location-aware normalizer, densification.

Yin et al. 2025, "Segmenting Text and Learning Their Rewards for Improved RLHF in Language
Model", arXiv 2501.02790 (docs/algorithms.md §5). A response is cut into segments where the
reference model is uncertain about the next token (entropy above a threshold c); a reward
model with a value at every position gives each segment the value at its last token; the
sequence score is the mean of the segment rewards; for PPO each segment reward is
normalized by its relative position in the response and spread evenly over its tokens.

Segment ends are carried as an (N, T) bool tensor aligned with the token ids: True at the
last token of each segment. Tokens of segment k are those after the end of segment k - 1
(or the first response token) up to and including its own end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

HUBER_EPSILON = 1.35
"""Huber threshold in robust-scale units (the paper's ε; sklearn's HuberRegressor default)."""

_MAD_TO_STD = 1.4826
"""Median absolute deviation -> standard deviation for normally distributed residuals."""


class LineFit(NamedTuple):
    """y ≈ slope · x + intercept."""

    slope: float
    intercept: float


class LocationNormalizer(NamedTuple):
    """μ(p) = mu_slope·log p + mu_intercept and σ(p) = sigma_slope·log p + sigma_intercept.

    p = k / K is the normalized position of the k-th of K segments (Yin et al. 2025;
    docs/algorithms.md §5).
    """

    mu_slope: float
    mu_intercept: float
    sigma_slope: float
    sigma_intercept: float


def segment_ends(
    entropy: Tensor, response_mask: Tensor, finished: Tensor, threshold: float
) -> Tensor:
    """Segment boundaries from the reference model's next-token entropy (Yin et al. 2025).

    A segment ends after response token t when H_t > c: H_t is the entropy of the
    reference model's distribution of the token after t. The EOS token of a finished row
    belongs to no segment; the last segment ends at the last non-EOS response token (for an
    unfinished row: the last response token). A finished row whose response is EOS alone
    gets one segment, the EOS token, so every row with a response has >= 1 segment.
    c = 0 gives one segment per token (also when an entropy underflows to exactly 0);
    c = inf gives one segment per response (the bandit reward).

    Args:
        entropy: (N, T) float, H_t at each position (any value on non-response tokens).
        response_mask: (N, T) bool, True on response tokens (EOS included), any padding.
        finished: (N,) bool, True when the row's last response token is EOS.
        threshold: c >= 0, in nats.

    Returns:
        (N, T) bool, True at the last token of each segment; False on prompt and padding.
    """
    resp = response_mask.bool()
    pos = torch.arange(resp.shape[1], device=resp.device).expand_as(resp)  # (N, T)
    last = torch.where(resp, pos, -1).amax(dim=1, keepdim=True)  # (N, 1)
    eos = resp & (pos == last) & finished.bool().unsqueeze(1)  # (N, T)
    content = resp & ~eos
    only_eos = ~content.any(dim=1, keepdim=True)  # (N, 1)
    content = content | (eos & only_eos)
    last_content = torch.where(content, pos, -1).amax(dim=1, keepdim=True)  # (N, 1)
    split = (entropy > threshold) | (threshold <= 0)
    return content & (split | (pos == last_content))


def segment_positions(ends: Tensor) -> Tensor:
    """Normalized position p = k / K of every segment end (k-th of the row's K segments).

    Args:
        ends: (N, T) bool segment ends (`segment_ends`).

    Returns:
        (N, T) float32, k / K in (0, 1] at segment ends, 0 elsewhere.
    """
    k = ends.long().cumsum(dim=1)  # (N, T)
    total = ends.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    return torch.where(ends, k.float() / total.float(), 0.0)


def segment_mean_scores(values: Tensor, ends: Tensor) -> Tensor:
    """Sequence score S(y) = mean of the segment rewards (values at segment ends).

    Yin et al. 2025 (docs/algorithms.md §5): the Bradley-Terry loss is applied to this mean.

    Args:
        values: (N, T) per-position reward-model values (differentiable).
        ends: (N, T) bool segment ends.

    Returns:
        (N,) scores; 0 for a row without segments.
    """
    k = ends.sum(dim=1).clamp(min=1).to(values.dtype)  # (N,)
    return (values * ends.to(values.dtype)).sum(dim=1) / k


def _weighted_line(x: Tensor, y: Tensor, w: Tensor) -> LineFit:
    """Weighted least squares of y on [x, 1] (float64, closed form)."""
    sw = w.sum()
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    var = (w * (x - mx) ** 2).sum()
    slope = (w * (x - mx) * (y - my)).sum() / var if var > 0 else torch.zeros((), dtype=x.dtype)
    return LineFit(float(slope), float(my - slope * mx))


def huber_line_fit(
    x: Tensor, y: Tensor, epsilon: float = HUBER_EPSILON, iterations: int = 50
) -> LineFit:
    """Robust line fit y ≈ a·x + b: Huber M-estimation by iteratively reweighted least squares.

    The residual scale s is re-estimated at every iteration as 1.4826·MAD of the residuals,
    and residuals beyond ε·s get weight ε·s / |r| (Huber 1964). OPEN in the paper: it names
    Huber regression with ε = 1.35 (sklearn's HuberRegressor, which estimates s jointly);
    the MAD scale here is the classical choice and needs no optimizer.

    Args:
        x: (M,) regressor.
        y: (M,) targets, M >= 2.
        epsilon: Huber threshold in units of s.
        iterations: Maximum IRLS iterations (stops early when the fit no longer moves).

    Returns:
        The fitted slope and intercept.
    """
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        raise ValueError(f"huber_line_fit needs at least 2 points, got {x.numel()}")
    fit = _weighted_line(x, y, torch.ones_like(x))
    for _ in range(iterations):
        r = y - (fit.slope * x + fit.intercept)
        scale = _MAD_TO_STD * (r - r.median()).abs().median()
        if scale <= 1e-12:
            break
        w = torch.clamp(epsilon * scale / r.abs().clamp(min=1e-12), max=1.0)
        new = _weighted_line(x, y, w)
        moved = abs(new.slope - fit.slope) + abs(new.intercept - fit.intercept)
        fit = new
        if moved < 1e-10:
            break
    return fit


def binned_robust_scale(x: Tensor, r: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Robust spread of residuals r in equal-count bins of x.

    Args:
        x: (M,) regressor.
        r: (M,) residuals.
        bins: Number of bins (<= M).

    Returns:
        (bins,) mean x of each bin and (bins,) 1.4826·MAD of its residuals (the standard
        deviation for normal residuals; a few gross outliers barely move it).
    """
    chunks = torch.tensor_split(torch.argsort(x), bins)
    centers = torch.stack([x[c].mean() for c in chunks])
    scales = torch.stack([_MAD_TO_STD * (r[c] - r[c].median()).abs().median() for c in chunks])
    return centers, scales


def fit_location_normalizer(
    rewards: Tensor, positions: Tensor, epsilon: float = HUBER_EPSILON, bins: int = 10
) -> LocationNormalizer:
    """Fits μ(p), σ(p) as a·log p + b by Huber regression (Yin et al. 2025; docs/algorithms.md §5).

    μ: Huber fit of the segment rewards on log p. σ: OPEN in the paper beyond "Huber
    regression". Here the residuals r - μ(p) are cut into `bins` equal-count bins of log p,
    each bin's spread is 1.4826·MAD (robust per-bin std), and σ(p) is the Huber line through
    (mean log p, spread) of the bins. (A Huber fit of |r|·sqrt(π/2) on log p was tried and
    rejected: Huber down-weights the long right tail of |r|, so σ came out ~20% low.)

    Args:
        rewards: (M,) segment rewards of a sample of responses, M >= 4.
        positions: (M,) their normalized positions p = k / K in (0, 1].
        epsilon: Huber threshold.
        bins: Bins of the σ fit (at most M // 2).

    Returns:
        The four numbers stored with the reward model.
    """
    log_p = positions.double().log()
    y = rewards.double()
    mu = huber_line_fit(log_p, y, epsilon)
    residuals = y - (mu.slope * log_p + mu.intercept)
    centers, spread = binned_robust_scale(log_p, residuals, max(2, min(bins, y.numel() // 2)))
    sigma = huber_line_fit(centers, spread, epsilon)
    return LocationNormalizer(mu.slope, mu.intercept, sigma.slope, sigma.intercept)


def normalize_segment_rewards(
    values: Tensor, ends: Tensor, normalizer: LocationNormalizer, min_std: float
) -> Tensor:
    """r̂_k = (r_k - μ(p_k)) / σ(p_k) at every segment end (Yin et al. 2025; docs/algorithms.md §5).

    Args:
        values: (N, T) per-position reward-model values; r_k is the value at end k.
        ends: (N, T) bool segment ends.
        normalizer: The fitted μ(p), σ(p).
        min_std: Floor of σ(p) (a linear σ fit can reach 0 or below at extreme p).

    Returns:
        (N, T) float32 normalized segment rewards at segment ends, 0 elsewhere.
    """
    log_p = segment_positions(ends).clamp(min=1e-12).log()  # (N, T)
    mu = normalizer.mu_slope * log_p + normalizer.mu_intercept
    sigma = (normalizer.sigma_slope * log_p + normalizer.sigma_intercept).clamp(min=min_std)
    return torch.where(ends, (values.float() - mu) / sigma, 0.0)


def densify_segment_rewards(segment_rewards: Tensor, ends: Tensor, response_mask: Tensor) -> Tensor:
    """Spreads each segment reward evenly over its tokens: r̂_k / |segment k| per token.

    Yin et al. 2025 (docs/algorithms.md §5). Tokens of a segment sum back to its reward; tokens
    outside every segment (prompt, padding, the EOS of a finished row, anything after EOS)
    get 0.

    Args:
        segment_rewards: (N, T) reward of each segment at its end (0 elsewhere).
        ends: (N, T) bool segment ends (`segment_ends`).
        response_mask: (N, T) bool, True on response tokens.

    Returns:
        (N, T) float32 per-token rewards.
    """
    resp = response_mask.bool()
    pos = torch.arange(resp.shape[1], device=resp.device).expand_as(resp)
    last_end = torch.where(ends, pos, -1).amax(dim=1, keepdim=True)  # (N, 1)
    covered = resp & (pos <= last_end)  # tokens that belong to a segment
    seg_id = (ends.long().cumsum(dim=1) - ends.long()).clamp(max=resp.shape[1] - 1)  # (N, T)
    lengths = torch.zeros(resp.shape, dtype=torch.float32, device=resp.device)
    lengths.scatter_add_(1, seg_id, covered.float())  # (N, K_max <= T): tokens per segment
    by_segment = torch.zeros_like(lengths)
    end_id = (ends.long().cumsum(dim=1) - 1).clamp(min=0)
    by_segment.scatter_add_(1, end_id, torch.where(ends, segment_rewards.float(), 0.0))
    per_token = by_segment.gather(1, seg_id) / lengths.gather(1, seg_id).clamp(min=1.0)
    return torch.where(covered, per_token, 0.0)


def segment_lengths(ends: Tensor, response_mask: Tensor) -> Tensor:
    """Mean tokens per segment of every row (0 for a row without segments).

    Args:
        ends: (N, T) bool segment ends.
        response_mask: (N, T) bool, True on response tokens.

    Returns:
        (N,) float32.
    """
    ones = densify_segment_rewards(ends.float(), ends, response_mask)  # 1/|seg| per token
    tokens = (ones > 0).sum(dim=1).float()
    return tokens / ends.sum(dim=1).clamp(min=1).float()
