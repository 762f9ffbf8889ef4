"""Contrastive rewards (pure torch).

Shen, Zhang, Yao, Zheng, Guo, Liu, "Improving Reinforcement Learning from Human Feedback
Using Contrastive Rewards", arXiv 2403.07708 (docs/algorithms.md §2). Offline, every RL prompt x
gets k responses y_j ~ π_SFT(· | x) scored once by the frozen reward model; in PPO the
reward of a sampled response is

    r_CR(x, y) = r(x, y) - agg_j r(x, y_j)

with agg the mean (the paper's choice) or, as OPEN options, the median or a quantile.
Failed baseline samples (no reward) are masked out of the aggregate.

This is not RLOO / GRPO: their baselines come online from the current policy's samples of
the same prompt; this one comes offline from the frozen SFT policy. A group baseline
removes any per-prompt constant, so RLOO / GRPO advantages are unchanged by r_CR; the
subtraction matters for critic-based (GAE) and batch-normalized (REINFORCE++) advantages.
"""

from __future__ import annotations

import torch

from ray_rlhf.algo.rewards import place_last_token_rewards


def _check_valid(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(P,) number of valid samples per prompt; raises if a prompt has none."""
    if rewards.shape != valid.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and valid {tuple(valid.shape)}: want (P, k)"
        )
    count = valid.sum(dim=1)  # (P,)
    if bool((count == 0).any()):
        rows = (count == 0).nonzero().flatten().tolist()
        raise ValueError(f"prompt row(s) {rows} have no valid baseline sample")
    return count


def mean_baseline(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of each prompt's valid baseline rewards (Shen et al. 2024, Eq. 4).

    Args:
        rewards: (P, k) baseline rewards r(x_p, y_j); values where `valid` is False are
            ignored (they may be NaN).
        valid: (P, k) bool, True where sample j of prompt p was generated and scored.

    Returns:
        (P,) float64 baselines.

    Raises:
        ValueError: If the shapes differ or a prompt has no valid sample.
    """
    count = _check_valid(rewards, valid)
    total = torch.where(valid, rewards.double(), 0.0).sum(dim=1)
    return total / count


def quantile_baseline(rewards: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each prompt's valid baseline rewards (OPEN option of §2).

    Linear interpolation between order statistics, as `torch.quantile` / numpy's default:
    with m valid values sorted v_0 <= ... <= v_{m-1}, the quantile is read at position
    q * (m - 1). q = 0.5 is the median (the mean of the two middle values when m is even).

    Args:
        rewards: (P, k) baseline rewards; ignored where `valid` is False.
        valid: (P, k) bool, True where the sample has a reward.
        q: Quantile in [0, 1].

    Returns:
        (P,) float64 baselines.

    Raises:
        ValueError: If q is outside [0, 1], the shapes differ, or a prompt has no valid sample.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    count = _check_valid(rewards, valid)
    # Invalid entries sort last (+inf), so the m valid values occupy positions 0..m-1.
    ordered = torch.where(valid, rewards.double(), torch.inf).sort(dim=1).values  # (P, k)
    pos = q * (count - 1).double()  # (P,)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    v_lo = ordered.gather(1, lo[:, None]).squeeze(1)
    v_hi = ordered.gather(1, hi[:, None]).squeeze(1)
    return v_lo + (pos - lo.double()) * (v_hi - v_lo)


def median_baseline(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median of each prompt's valid baseline rewards: `quantile_baseline(..., 0.5)`.

    Args:
        rewards: (P, k) baseline rewards; ignored where `valid` is False.
        valid: (P, k) bool.

    Returns:
        (P,) float64 baselines.
    """
    return quantile_baseline(rewards, valid, 0.5)


def contrastive_scores(
    scores: torch.Tensor, baselines: torch.Tensor, n_samples: int
) -> torch.Tensor:
    """r_CR = r(x, y) - baseline(x) for N = P * n_samples rows (Shen et al. 2024, Eq. 5).

    Args:
        scores: (N,) rewards of the sampled responses; row i belongs to prompt i // n_samples.
        baselines: (P,) one baseline per prompt.
        n_samples: Samples per prompt.

    Returns:
        (N,) contrastive rewards, in the dtype of `scores`.
    """
    if scores.shape[0] != baselines.shape[0] * n_samples:
        raise ValueError(
            f"{scores.shape[0]} scores for {baselines.shape[0]} prompts x {n_samples} samples"
        )
    return scores - baselines.to(scores.dtype).repeat_interleave(n_samples)


def subtract_at_last_token(
    token_rewards: torch.Tensor, row_baselines: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Contrastive rewards on top of per-token (e.g. segment) rewards.

    The baseline is subtracted at each row's last response token, so the token rewards of
    a row sum to (their previous sum) - baseline, and the tokens before the last keep their
    (segment) rewards. With segment rewards that sum to the sequence score this gives
    sum_t r_t = score - baseline, the same total as the last-token placement of r_CR.

    Args:
        token_rewards: (N, T) float rewards placed on response tokens.
        row_baselines: (N,) baseline of each row's prompt.
        response_mask: (N, T) bool, True where the token is part of the response.

    Returns:
        (N, T) float32 token rewards; rows without a response token are unchanged.
    """
    return token_rewards.float() - place_last_token_rewards(row_baselines, response_mask)


def within_prompt_variance(values: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Variance of per-sample values across the samples of each prompt, averaged over prompts.

    The evidence metric of §2 ("lower variance of per-prompt advantages"): values are the
    sequence advantages of N = P * n_samples rows. Population variance (divides by
    n_samples); 0 when n_samples is 1.

    Args:
        values: (N,) one value per row, rows grouped by prompt.
        n_samples: Samples per prompt.

    Returns:
        Scalar float64 tensor.
    """
    groups = values.double().reshape(-1, n_samples)  # (P, n)
    return groups.var(dim=1, unbiased=False).mean()
