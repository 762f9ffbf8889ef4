"""Advantage estimators: GAE with a critic, and critic-free group / batch baselines.

Token-level inputs are ``(B, T)`` with a bool ``mask``: True where the token is part of
the response. Masked-out positions are skipped (they neither earn reward nor break the
discounting chain) and get 0 in every output. Sequence-level inputs are ``(N,)`` scores
laid out as consecutive groups of ``group_size`` samples of the same prompt:
``[p0_s0, p0_s1, ..., p0_s{k-1}, p1_s0, ...]``.

All estimators here produce training targets: pass detached inputs.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ray_rlhf.algo.masking import masked_whiten


class GAEResult(NamedTuple):
    """Output of :func:`compute_gae`; both ``(B, T)`` and 0 where the mask is False."""

    advantages: Tensor
    returns: Tensor


def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> GAEResult:
    """Generalized advantage estimation, vectorized over the batch, looping over time.

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t'}``,
    where ``t'`` is the next position with mask True (Schulman et al. 2015,
    arXiv 1506.02438, eq. 16). After the last True position of a row the episode has
    ended: ``V`` and ``A`` there are 0. Masked-out positions in the middle of a row (e.g.
    tool output in a multi-turn response) are skipped, so discounting counts response
    tokens only. With trailing padding this is the usual right-to-left recursion.

    Args:
        rewards: Per-token rewards ``(B, T)``, e.g. the score at the last token plus a
            per-token KL penalty.
        values: Critic values ``(B, T)`` for the state before each token.
        mask: Bool ``(B, T)``; True where the token is part of the response.
        gamma: Discount factor.
        lam: GAE lambda; 1 gives Monte-Carlo returns minus V, 0 gives one-step TD.

    Returns:
        ``GAEResult(advantages, returns)``, both ``(B, T)``; ``returns = advantages + values``
        on the mask (the critic's regression target), 0 elsewhere.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,) V at the next True position
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,) A at the next True position
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(valid, advantage, 0.0)
        next_value = torch.where(valid, values[:, t], next_value)
        next_advantage = torch.where(valid, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, 0.0)
    return GAEResult(advantages, returns)


def _split_groups(scores: Tensor, group_size: int) -> Tensor:
    """View ``(N,)`` scores as ``(N // group_size, group_size)``, validating the layout."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(
            f"group_size={group_size} does not divide the number of scores N={scores.numel()}"
        )
    return scores.view(-1, group_size)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages.

    Each sample's baseline is the mean score of the *other* ``k - 1`` samples of its
    prompt: ``A_i = s_i - (sum_j s_j - s_i) / (k - 1)`` (RLOO, Ahmadian et al. 2024,
    arXiv 2402.14740).

    Args:
        scores: Sequence scores ``(N,)``, consecutive groups of ``group_size`` per prompt.
        group_size: Samples per prompt ``k``; at least 2.

    Returns:
        Advantages ``(N,)``.

    Raises:
        ValueError: If ``group_size < 2`` or it does not divide ``N``.
    """
    groups = _split_groups(scores, group_size)  # (G, k)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def group_normalized_advantages(
    scores: Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> Tensor:
    """GRPO outcome-supervision advantages: scores standardized within each prompt group.

    ``A_i = (s_i - mean(s)) / (std(s) + eps)`` over the group of the same prompt (Shao et
    al. 2024, arXiv 2402.03300, sec. 4.1.2 outcome supervision, used in eq. 3). OPEN in
    the paper: the std is the unbiased (n - 1) sample std, as in common implementations.

    Args:
        scores: Sequence scores ``(N,)``, consecutive groups of ``group_size`` per prompt.
        group_size: Samples per prompt; at least 2.
        eps: Added to the std so a group of identical scores gets advantage 0.
        scale_by_std: If False, only subtract the group mean (Dr. GRPO, Liu et al. 2025,
            arXiv 2503.20783).

    Returns:
        Advantages ``(N,)``.

    Raises:
        ValueError: If ``group_size < 2`` or it does not divide ``N``.
    """
    groups = _split_groups(scores, group_size)  # (G, k)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def reinforce_pp_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Token-level discounted returns ``G_t = r_t + gamma * G_{t'}`` (REINFORCE++).

    Hu 2025, arXiv 2501.03262: the per-token reward is the sequence score at the last
    token plus the per-token KL penalty; the return-to-go is the advantage before
    batch whitening (:func:`reinforce_pp_advantages`). ``t'`` is the next True position.
    This is GAE with a zero critic and ``lam = 1``, so it reuses :func:`compute_gae`.

    Args:
        rewards: Per-token rewards ``(B, T)`` including any KL penalty.
        mask: Bool ``(B, T)``; True where the token is part of the response.
        gamma: Discount factor.

    Returns:
        Returns ``(B, T)``; 0 where ``mask`` is False.
    """
    return compute_gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0).advantages


def reinforce_pp_advantages(returns: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++ advantages: returns whitened over every response token of the batch.

    Hu 2025, arXiv 2501.03262: the global-batch mean and std stand in for a critic. Pass
    the whole global batch (not one micro-batch) so all samples share one baseline.

    Args:
        returns: Token-level returns ``(B, T)`` from :func:`reinforce_pp_returns`.
        mask: Bool ``(B, T)``; True where the token is part of the response.

    Returns:
        Advantages ``(B, T)``; 0 where ``mask`` is False.
    """
    return masked_whiten(returns, mask)


def broadcast_sequence_advantage(advantages: Tensor, mask: Tensor) -> Tensor:
    """Give every response token its sequence's advantage (RLOO, GRPO).

    Args:
        advantages: Per-sequence advantages ``(B,)``.
        mask: Bool ``(B, T)``; True where the token is part of the response.

    Returns:
        Tensor ``(B, T)``: ``advantages[b]`` on the mask, 0 elsewhere.
    """
    return torch.where(mask, advantages.unsqueeze(-1), 0.0)
