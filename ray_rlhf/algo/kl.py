"""KL divergence between the policy and the reference model: estimators and coefficients.

Per-token estimators of KL(pi || pi_ref) from tokens sampled from the policy pi
(Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).
With ``log_ratio = log pi(y_t) - log pi_ref(y_t)``:

- k1 = log_ratio: unbiased, high variance, can be negative per token;
- k2 = log_ratio^2 / 2: biased, low variance, always >= 0;
- k3 = exp(-log_ratio) + log_ratio - 1: unbiased, low variance, always >= 0.
"""

from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1 estimator: the log ratio itself.

    Args:
        log_ratio: ``log pi - log pi_ref`` per token, any shape, e.g. ``(B, T)``.

    Returns:
        Per-token estimate, same shape.
    """
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """k2 estimator: half the squared log ratio.

    Args:
        log_ratio: ``log pi - log pi_ref`` per token, any shape, e.g. ``(B, T)``.

    Returns:
        Per-token estimate, same shape.
    """
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """k3 estimator: ``r - 1 - log r`` with ``r = pi_ref / pi``.

    Args:
        log_ratio: ``log pi - log pi_ref`` per token, any shape, e.g. ``(B, T)``.

    Returns:
        Per-token estimate, same shape.
    """
    return torch.exp(-log_ratio) + log_ratio - 1.0


_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: KLEstimator,
    clamp: float | None = None,
) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) for tokens sampled from pi.

    Args:
        logprobs: Log-probs of the sampled tokens under the policy pi, ``(B, T)``.
        ref_logprobs: Log-probs of the same tokens under the reference pi_ref, ``(B, T)``.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).
        clamp: If given, the log ratio is clipped to ``[-clamp, clamp]`` before the
            estimator, which keeps k3's exponential finite on rare tokens.

    Returns:
        Per-token estimate ``(B, T)``. No mask is applied here.

    Raises:
        ValueError: If ``estimator`` is not one of the three names.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of k1, k2, k3")
    log_ratio = logprobs - ref_logprobs
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    return _ESTIMATORS[estimator](log_ratio)


def apply_kl_penalty(rewards: Tensor, kl: Tensor, coef: float, mask: Tensor) -> Tensor:
    """Subtract the KL penalty from per-token rewards: ``r_t - coef * kl_t``.

    The KL-as-reward placement of Ziegler et al. 2019, arXiv 1909.08593.

    Args:
        rewards: Per-token rewards ``(B, T)``, e.g. the score placed at the last token.
        kl: Per-token KL estimate ``(B, T)`` from :func:`kl_estimate`.
        coef: KL coefficient beta, e.g. a controller's ``value``.
        mask: Bool ``(B, T)``; True where the token is part of the response.

    Returns:
        Penalized rewards ``(B, T)``; 0 where ``mask`` is False.
    """
    return torch.where(mask, rewards - coef * kl, 0.0)


class KLController(Protocol):
    """Supplies the KL coefficient and adapts it from the measured KL."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust ``value`` after ``n_steps`` samples that showed mean KL ``current_kl``."""


class FixedKLController:
    """A constant KL coefficient; ``update`` leaves it unchanged.

    Args:
        coef: The KL coefficient beta.
    """

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep ``value``; the arguments exist to match :class:`KLController`."""


class AdaptiveKLController:
    """Proportional controller that steers the measured KL toward a target.

    Ziegler et al. 2019, arXiv 1909.08593, eq. 2:
    ``e = clip(KL / KL_target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + K_beta * e)`` with
    ``K_beta = n_steps / horizon``, so ``horizon`` samples at a constant error move beta by
    about a factor ``exp(e)``.

    Args:
        init_coef: Starting coefficient beta.
        target_kl: KL to hold, in the unit the caller measures (e.g. nats per sequence).
        horizon: Samples over which the controller corrects the error; larger is slower.

    Raises:
        ValueError: If ``target_kl`` or ``horizon`` is not positive.
    """

    def __init__(self, init_coef: float, target_kl: float, horizon: int) -> None:
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"target_kl and horizon must be > 0, got {target_kl}, {horizon}")
        self.value = init_coef
        self.target_kl = target_kl
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` up if ``current_kl`` exceeds the target, down if below.

        Args:
            current_kl: Mean KL measured over the last batch.
            n_steps: Number of samples in that batch.
        """
        error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
