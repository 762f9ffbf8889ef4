"""Bilevel meta-learning of a reward model over preference domains (pure torch).

Jia, "Generalizing Reward Modeling for Out-of-Distribution Preference Learning",
arXiv 2402.14760 (ECML-PKDD 2024); docs/algorithms.md §4. For each training domain d with
preference pairs D_d, the reward model r_φ is judged by the policy it induces:

    min_φ  F(φ) = Σ_d L_out(θ_K^d(φ); D_d)
    θ_0 = θ_ref,   θ_{k+1} = θ_k − α ∇_θ L_in(θ_k, φ),   k = 0 .. K−1
    L_in(θ, φ)  = −E_{y∼π_θ}[r_φ(x, y)] + β KL(π_θ ‖ π_ref)
    L_out(θ; D) = −E_D log σ(β log π_θ(y_w|x)/π_ref(y_w|x) − β log π_θ(y_l|x)/π_ref(y_l|x))

The paper's θ*_d(φ) = argmin_θ L_in is approximated by K plain-SGD steps from π_ref (OPEN:
K, α and the inner optimizer; SGD keeps the derivative below exact). At the inner optimum
π* ∝ π_ref exp(r_φ / β), so β log π*/π_ref = r_φ − β log Z(x): the outer loss is then the
Bradley-Terry loss of r_φ itself, and the bilevel problem asks for a reward whose *induced
policy*, after a few steps, ranks the domain's pairs correctly.

Two meta-gradients (`order`):

- "full": autograd through all K unrolled steps (second-order; memory grows with K).
- "first": the identity-Jacobian approximation derived in `first_order_meta_gradient`;
  exact for K = 1, error O(α K ‖∇²_θθ L_in‖) relative, memory of one step per step.

Parameters are lists of tensors (θ, φ), as in `torch.func`; the losses are callables so
one routine serves the exact toy problems and the sampled sequence policies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ray_rlhf.algo.rm_loss import RMLossStats, bradley_terry_loss

MetaOrder = Literal["first", "full"]


class InnerStats(NamedTuple):
    """Detached diagnostics of one inner step (scalars).

    Attributes:
        reward: Mean reward r_φ under π_θ (exact expectation or sample mean).
        kl: KL(π_θ ‖ π_ref) per sequence (exact, or the mean k1 estimate on the samples).
    """

    reward: Tensor
    kl: Tensor


InnerLoss = Callable[[Sequence[Tensor], int], tuple[Tensor, InnerStats]]
"""(θ_k, k) -> (scalar L_in(θ_k, φ) or a surrogate with the same θ-gradient, stats); φ is
captured by the closure and must stay in the autograd graph."""

OuterLoss = Callable[[Sequence[Tensor]], tuple[Tensor, RMLossStats]]
"""θ_K -> (scalar L_out(θ_K), stats)."""


class MetaGradient(NamedTuple):
    """Result of one domain's meta-gradient.

    Attributes:
        grads: dF/dφ, one detached tensor per φ tensor (zeros where φ is unused).
        outer_loss: L_out(θ_K), detached scalar.
        outer_stats: Accuracy and mean implicit-reward margin of θ_K on the outer pairs.
        adapted: θ_K, detached.
        inner: Stats of each inner step k = 0 .. K−1 (step 0 is π_ref itself).
    """

    grads: tuple[Tensor, ...]
    outer_loss: Tensor
    outer_stats: RMLossStats
    adapted: tuple[Tensor, ...]
    inner: tuple[InnerStats, ...]


def implicit_reward_margin(
    logp_chosen: Tensor,
    ref_logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_logp_rejected: Tensor,
    beta: float,
) -> Tensor:
    """β log π_θ/π_ref of the chosen minus that of the rejected response (§4 outer loss).

    Args:
        logp_chosen: log π_θ(y_w | x) per pair, summed over response tokens, ``(P,)``.
        ref_logp_chosen: log π_ref(y_w | x), ``(P,)``.
        logp_rejected: log π_θ(y_l | x), ``(P,)``.
        ref_logp_rejected: log π_ref(y_l | x), ``(P,)``.
        beta: KL coefficient β (the implicit reward's scale).

    Returns:
        ``(P,)`` margins; 0 when π_θ = π_ref.
    """
    return beta * ((logp_chosen - ref_logp_chosen) - (logp_rejected - ref_logp_rejected))


def outer_preference_loss(
    logp_chosen: Tensor,
    ref_logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_logp_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, RMLossStats]:
    """L_out = mean −log σ(implicit reward margin): the adapted policy's preference loss.

    Jia 2024 (arXiv 2402.14760, the outer problem of §4); the same form as the DPO loss
    (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), here a function of the adapted θ_K.
    The math is `bradley_terry_loss` on the implicit rewards β log π_θ/π_ref.

    Args:
        logp_chosen, ref_logp_chosen, logp_rejected, ref_logp_rejected: ``(P,)`` sequence
            log-probs, as for `implicit_reward_margin`.
        beta: KL coefficient β.

    Returns:
        ``(loss, RMLossStats)``: scalar loss (log 2 at π_θ = π_ref); accuracy is the share
        of pairs with a positive margin, mean_margin the mean implicit-reward margin.
    """
    return bradley_terry_loss(
        beta * (logp_chosen - ref_logp_chosen), beta * (logp_rejected - ref_logp_rejected)
    )


def kl_regularized_objective(
    logits: Tensor, ref_logits: Tensor, rewards: Tensor, beta: float
) -> tuple[Tensor, InnerStats]:
    """Exact L_in = −E_{a∼π}[r(a)] + β KL(π ‖ π_ref) over a finite action set.

    Differentiable in the logits (θ) and the rewards (φ); for toy problems where the
    expectation is a sum. Its minimizer is π* ∝ π_ref exp(r / β).

    Args:
        logits: Policy logits ``(B, A)``: B contexts, A actions.
        ref_logits: Reference logits ``(B, A)``.
        rewards: r(x_b, a) ``(B, A)``.
        beta: KL coefficient β >= 0.

    Returns:
        ``(loss, InnerStats)``: the loss is the mean over the B contexts.
    """
    logp = F.log_softmax(logits, dim=-1)  # (B, A)
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    p = logp.exp()
    reward = (p * rewards).sum(-1)  # (B,)
    kl = (p * (logp - ref_logp)).sum(-1)  # (B,)
    loss = (beta * kl - reward).mean()
    return loss, InnerStats(reward.detach().mean(), kl.detach().mean())


def kl_regularized_surrogate(
    logprobs: Tensor, ref_logprobs: Tensor, rewards: Tensor, beta: float, n_samples: int
) -> tuple[Tensor, InnerStats]:
    """A sampled surrogate whose θ-gradient is an unbiased estimate of ∇_θ L_in.

    For y_i ∼ π_θ(· | x): ∇_θ L_in = −E[(r_φ(x, y) − β log π_θ/π_ref(y)) ∇_θ log π_θ(y)]
    (the score-function identity; the KL's E[∇ log π_θ] term is 0). The surrogate is

        S = −mean_i (a_i − b_i) log π_θ(y_i | x),   a_i = r_φ(x, y_i) − β sg[log ratio_i]

    with b_i the leave-one-out mean of a over the other samples of the same prompt (RLOO,
    Ahmadian et al. 2024, arXiv 2402.14740; 0 when n_samples is 1). The log ratio is
    detached (sg), the rewards are *not*: ∇_θ S keeps its graph to φ, which is the mixed
    derivative ∂²S/∂φ∂θ the meta-gradient needs. S's value is not L_in; read the stats.

    Args:
        logprobs: log π_θ(y_i | x_i) summed over response tokens ``(N,)``, N = P · n_samples,
            rows grouped by prompt (row i belongs to prompt i // n_samples); keeps θ's graph.
        ref_logprobs: log π_ref(y_i | x_i) ``(N,)``.
        rewards: r_φ(x_i, y_i) ``(N,)``; keeps φ's graph.
        beta: KL coefficient β.
        n_samples: Samples per prompt.

    Returns:
        ``(loss, InnerStats)``: stats are the mean reward and the mean k1 estimate of the
        per-sequence KL.

    Raises:
        ValueError: If N is not a multiple of ``n_samples``.
    """
    if n_samples < 1 or logprobs.shape[0] % n_samples:
        raise ValueError(f"{logprobs.shape[0]} rows are not prompts x {n_samples} samples")
    log_ratio = (logprobs - ref_logprobs).detach()  # (N,)
    advantage = (rewards - beta * log_ratio).view(-1, n_samples)  # (P, n)
    if n_samples > 1:
        others = (advantage.sum(-1, keepdim=True) - advantage) / (n_samples - 1)
        advantage = advantage - others
    loss = -(advantage.reshape(-1) * logprobs).mean()
    return loss, InnerStats(rewards.detach().mean(), log_ratio.mean())


def _grad(output: Tensor, inputs: Sequence[Tensor], create_graph: bool) -> tuple[Tensor, ...]:
    """d output / d inputs, zeros for inputs the output does not reach."""
    if not output.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    return torch.autograd.grad(
        output, inputs, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )


def _leaves(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().requires_grad_(True) for p in params]


def full_unroll_meta_gradient(
    theta0: Sequence[Tensor],
    phi: Sequence[Tensor],
    inner_loss: InnerLoss,
    outer_loss: OuterLoss,
    lr: float,
    steps: int,
) -> MetaGradient:
    """dF/dφ by autograd through K unrolled SGD steps (the exact gradient of the K-step
    bilevel objective; `order="full"`).

    Every step's inner gradient is built with ``create_graph=True`` and θ_{k+1} stays a
    function of θ_k and φ, so memory grows with K. With sampled inner losses the samples
    of each step are constants of the graph (see `first_order_meta_gradient`).

    Args:
        theta0: θ_0 = θ_ref, the adapted policy parameters (any shapes).
        phi: Reward parameters; `inner_loss` must use them (they need ``requires_grad``).
        inner_loss: (θ_k, k) -> (L_in or surrogate, stats).
        outer_loss: θ_K -> (L_out, stats).
        lr: Inner SGD step size α.
        steps: K >= 1.

    Returns:
        `MetaGradient`.
    """
    _check_steps(steps)
    theta = _leaves(theta0)
    inner = []
    for k in range(steps):
        loss, stats = inner_loss(theta, k)
        grads = _grad(loss, theta, create_graph=True)
        theta = [t - lr * g for t, g in zip(theta, grads, strict=True)]
        inner.append(stats)
    out, out_stats = outer_loss(theta)
    phi_grads = _grad(out, phi, create_graph=False)
    return MetaGradient(
        phi_grads, out.detach(), out_stats, tuple(t.detach() for t in theta), tuple(inner)
    )


def first_order_meta_gradient(
    theta0: Sequence[Tensor],
    phi: Sequence[Tensor],
    inner_loss: InnerLoss,
    outer_loss: OuterLoss,
    lr: float,
    steps: int,
) -> MetaGradient:
    """dF/dφ with the θ→θ Jacobians of the inner steps replaced by the identity.

    Derivation. With g_k = ∇_θ L_in(θ_k, φ), H_k = ∇²_θθ L_in(θ_k, φ) and the mixed
    derivative M_k = ∂g_k/∂φ, differentiating θ_{k+1} = θ_k − α g_k gives

        dθ_{k+1}/dφ = (I − α H_k) dθ_k/dφ − α M_k,   dθ_0/dφ = 0
        dθ_K/dφ     = −α Σ_k [Π_{j=k+1}^{K−1} (I − α H_j)] M_k            (exact)
                    ≈ −α Σ_k M_k                                          (here)
        dF/dφ       ≈ −α Σ_k M_kᵀ v,   v = ∇_θ L_out(θ_K).

    The iterates θ_k are the true ones; only the propagation of dθ/dφ through later steps
    is dropped (I − αH_j ≈ I). So the result equals the full unroll when K = 1 (empty
    product) or when L_in is linear in θ, and its relative error is O(α K ‖H‖) otherwise.
    This is *not* the "first-order MAML" that drops M_k (that would give 0 here: θ_0
    does not depend on φ, the whole signal is in the mixed derivative).

    Computation: M_kᵀ v = ∇_φ ⟨g_k, v⟩. Each g_k is built with ``create_graph=True`` at a
    detached θ_k, so no graph chains across steps; after the outer gradient v, one
    backward of −α Σ_k ⟨g_k, v⟩ to φ gives the result.

    Sampled inner losses (`kl_regularized_surrogate`): both orders treat the samples of
    step k as constants. The dependence of the sampling distribution π_{θ_k} on φ for
    k >= 1 (a score-function term) is dropped; step 0 samples π_ref, which does not
    depend on φ, so for K = 1 nothing is dropped.

    Args:
        theta0, phi, inner_loss, outer_loss, lr, steps: As for `full_unroll_meta_gradient`.

    Returns:
        `MetaGradient`.
    """
    _check_steps(steps)
    theta = _leaves(theta0)
    inner, couplings = [], []
    for k in range(steps):
        loss, stats = inner_loss(theta, k)
        grads = _grad(loss, theta, create_graph=True)  # g_k, a function of φ
        couplings.append(grads)
        theta = _leaves([t - lr * g for t, g in zip(theta, grads, strict=True)])
        inner.append(stats)
    out, out_stats = outer_loss(theta)
    v = _grad(out, theta, create_graph=False)
    pairing = sum(
        (g * vi).sum() for grads in couplings for g, vi in zip(grads, v, strict=True)
    )  # Σ_k <g_k, v>
    phi_grads = _grad(-lr * torch.as_tensor(pairing), phi, create_graph=False)
    return MetaGradient(
        phi_grads, out.detach(), out_stats, tuple(t.detach() for t in theta), tuple(inner)
    )


_ORDERS = {"first": first_order_meta_gradient, "full": full_unroll_meta_gradient}


def meta_gradient(
    theta0: Sequence[Tensor],
    phi: Sequence[Tensor],
    inner_loss: InnerLoss,
    outer_loss: OuterLoss,
    lr: float,
    steps: int,
    order: MetaOrder,
) -> MetaGradient:
    """`first_order_meta_gradient` or `full_unroll_meta_gradient` by name.

    Raises:
        ValueError: If ``order`` is not "first" or "full", or ``steps`` < 1.
    """
    if order not in _ORDERS:
        raise ValueError(f"unknown meta-gradient order {order!r}; expected 'first' or 'full'")
    return _ORDERS[order](theta0, phi, inner_loss, outer_loss, lr, steps)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"need at least one inner step, got {steps}")
