"""PPO losses: clipped policy surrogate, clipped value loss, entropy and KL terms.

Aggregation (one choice for every loss here): token-mean over the mask, i.e. every
response token in the batch weighs the same, so long responses count more than short
ones. Padding never contributes. A learner that accumulates gradients over micro-batches
should pass ``num_tokens`` = response tokens in the whole mini-batch; each micro-batch
then divides its masked sum by the same number, and the accumulated gradient equals one
token-mean over the mini-batch (averaging per-micro-batch means would weigh tokens of
sparse micro-batches more).

Every loss returns a scalar to minimize; stats are detached scalar tensors (no host sync).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from ray_rlhf.algo.kl import KLEstimator, kl_estimate
from ray_rlhf.algo.masking import masked_entropy_from_logits, masked_mean, masked_sum


class PolicyLossStats(NamedTuple):
    """Detached diagnostics of :func:`policy_loss`, each a scalar token-mean over the mask.

    Attributes:
        clip_fraction: Share of tokens whose clipped term is the minimum (no gradient).
        approx_kl: k3 estimate of KL(pi_old || pi), sampling distribution pi_old.
        ratio_mean: Mean importance ratio pi / pi_old.
    """

    clip_fraction: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor


class ValueLossStats(NamedTuple):
    """Detached diagnostics of :func:`value_loss`.

    Attributes:
        clip_fraction: Share of tokens where the clipped error is the larger one (0 when
            value clipping is off).
    """

    clip_fraction: Tensor


def _token_mean(per_token: Tensor, mask: Tensor, num_tokens: float | None) -> Tensor:
    """Masked sum divided by ``num_tokens``, or by the mask's own count when None."""
    if num_tokens is None:
        return masked_mean(per_token, mask)
    return masked_sum(per_token, mask) / num_tokens


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    num_tokens: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Clipped surrogate objective, negated to a loss.

    ``L = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t)`` with
    ``r_t = pi(y_t) / pi_old(y_t)`` (Schulman et al. 2017, arXiv 1707.06347, eq. 7),
    token-mean over the mask (see the module docstring). An ``eps_high`` above ``eps`` is
    the asymmetric "clip-higher" of DAPO (Yu et al. 2025, arXiv 2503.14476). With
    ``is_weights`` w_t each token's term is multiplied by w_t: the decoupled objective for
    samples from an older behaviour policy (see :mod:`ray_rlhf.algo.offpolicy`).

    Args:
        logprobs: Log-probs of the sampled tokens under the current policy, ``(B, T)``.
        old_logprobs: Log-probs under the policy that generated them, ``(B, T)``.
        advantages: Per-token advantages ``(B, T)`` (detached).
        mask: Bool ``(B, T)``; True where the token is part of the response.
        clip_eps: Lower clip range, ratio >= 1 - clip_eps (and upper when no high given).
        clip_eps_high: Upper clip range, ratio <= 1 + clip_eps_high; None means clip_eps.
        num_tokens: Divisor for the masked sum; None means the mask's token count.
        is_weights: Detached per-token importance weights ``(B, T)``, e.g. from
            :func:`~ray_rlhf.algo.offpolicy.truncated_is_weights`; None means 1.

    Returns:
        ``(loss, PolicyLossStats)``; the loss is a scalar.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = _token_mean(per_token, mask, num_tokens)
    with torch.no_grad():
        stats = PolicyLossStats(
            clip_fraction=masked_mean((clipped < unclipped).to(ratio.dtype), mask),
            approx_kl=masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask),
            ratio_mean=masked_mean(ratio, mask),
        )
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None,
    num_tokens: float | None = None,
) -> tuple[Tensor, ValueLossStats]:
    """Squared-error critic loss with optional PPO-style value clipping.

    ``L = 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``: the new value
    may not move more than ``eps`` from the rollout-time value to lower the loss (value
    clipping of the PPO reference implementation; Engstrom et al. 2020, arXiv 2005.12729).

    Args:
        values: Current critic values ``(B, T)``.
        old_values: Critic values at rollout time ``(B, T)``.
        returns: Regression targets ``(B, T)``, e.g. from :func:`compute_gae`.
        mask: Bool ``(B, T)``; True where the token is part of the response.
        clip_eps: Value clip range; None disables clipping.
        num_tokens: Divisor for the masked sum; None means the mask's token count.

    Returns:
        ``(loss, ValueLossStats)``; the loss is a scalar.
    """
    unclipped = (values - returns).square()
    if clip_eps is None:
        per_token = unclipped
        clip_fraction = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped = (clipped_values - returns).square()
        per_token = torch.maximum(unclipped, clipped)
        clip_fraction = masked_mean((clipped > unclipped).to(values.dtype), mask)
    loss = 0.5 * _token_mean(per_token, mask, num_tokens)
    return loss, ValueLossStats(clip_fraction=clip_fraction.detach())


def entropy_bonus(logits: Tensor, mask: Tensor, num_tokens: float | None = None) -> Tensor:
    """Token-mean policy entropy over the mask; differentiable.

    Subtract ``coef * entropy_bonus(...)`` from the loss to encourage exploration, or
    log it detached (``policy/entropy``). Only response positions are computed.

    Args:
        logits: Policy logits ``(B, T, V)`` aligned with the response tokens.
        mask: Bool ``(B, T)``; True where the token is part of the response.
        num_tokens: Divisor for the masked sum; None means the mask's token count.

    Returns:
        Scalar mean entropy in nats.
    """
    return _token_mean(masked_entropy_from_logits(logits, mask), mask, num_tokens)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    estimator: KLEstimator,
    num_tokens: float | None = None,
) -> Tensor:
    """KL(pi || pi_ref) as a loss term instead of a reward penalty.

    The KL-in-loss placement of GRPO (Shao et al. 2024, arXiv 2402.03300, eq. 3-4, with
    the k3 estimator). Add ``coef * kl_loss(...)`` to the policy loss. For on-policy
    samples the expected gradients differ: k2 gives the gradient of KL(pi || pi_ref), k3
    that of the reverse KL(pi_ref || pi), and k1 zero (it acts only through sampling,
    which this term does not differentiate).

    Args:
        logprobs: Log-probs of the sampled tokens under the current policy, ``(B, T)``.
        ref_logprobs: Log-probs under the reference model, ``(B, T)``.
        mask: Bool ``(B, T)``; True where the token is part of the response.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see :mod:`ray_rlhf.algo.kl`).
        num_tokens: Divisor for the masked sum; None means the mask's token count.

    Returns:
        Scalar token-mean KL estimate.
    """
    return _token_mean(kl_estimate(logprobs, ref_logprobs, estimator), mask, num_tokens)
