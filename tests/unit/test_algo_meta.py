"""Meta-gradients of the bilevel reward objective on a 3-action problem with exact expectations.

Toy (Jia 2024, docs/algorithms.md §4): B = 2 contexts, A = 3 actions, a linear reward
r_φ(b, a) = φ · f(b, a) with φ in R^2, a softmax policy with logits θ (B, A), the exact inner
objective, and outer preference pairs over actions. F(φ) = L_out(θ_K(φ)) after K SGD steps.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ray_rlhf.algo.meta import (
    InnerStats,
    first_order_meta_gradient,
    full_unroll_meta_gradient,
    implicit_reward_margin,
    kl_regularized_objective,
    kl_regularized_surrogate,
    meta_gradient,
    outer_preference_loss,
)

DT = torch.float64
FEATURES = torch.tensor(
    [[[1.0, 0.0], [0.0, 1.0], [0.5, -1.0]], [[-1.0, 0.5], [1.0, 1.0], [0.0, -0.5]]], dtype=DT
)  # (B, A, D)
REF_LOGITS = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]], dtype=DT)  # (B, A)
PAIRS = torch.tensor([[0, 2, 0], [0, 1, 2], [1, 1, 0], [1, 2, 0]])  # (P, 3): context, y_w, y_l
BETA = 0.5
PHI0 = torch.tensor([0.4, -0.7], dtype=DT)


def rewards(phi: torch.Tensor) -> torch.Tensor:
    return FEATURES @ phi  # (B, A)


def pair_logps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = F.log_softmax(logits, dim=-1)
    return logp[PAIRS[:, 0], PAIRS[:, 1]], logp[PAIRS[:, 0], PAIRS[:, 2]]


REF_W, REF_L = pair_logps(REF_LOGITS)


def toy_losses(phi: torch.Tensor):
    def inner(theta, k):
        return kl_regularized_objective(theta[0], REF_LOGITS, rewards(phi), BETA)

    def outer(theta):
        chosen, rejected = pair_logps(theta[0])
        return outer_preference_loss(chosen, REF_W, rejected, REF_L, BETA)

    return inner, outer


def analytic_inner_grad(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """d L_in / d logits, by hand: p ⊙ (c − <p, c>) / B with c = β log(p / p_ref) − r."""
    logp = F.log_softmax(theta, dim=-1)
    p = logp.exp()
    c = BETA * (logp - F.log_softmax(REF_LOGITS, dim=-1)) - rewards(phi)
    return p * (c - (p * c).sum(-1, keepdim=True)) / theta.shape[0]


def explicit_bilevel(phi: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """F(φ) by a hand-written loop with the analytic inner gradient (differentiable in φ)."""
    theta = REF_LOGITS.clone()
    for _ in range(steps):
        theta = theta - lr * analytic_inner_grad(theta, phi)
    chosen, rejected = pair_logps(theta)
    return -F.logsigmoid(implicit_reward_margin(chosen, REF_W, rejected, REF_L, BETA)).mean()


def run(order: str, lr: float, steps: int, phi0: torch.Tensor = PHI0):
    phi = phi0.clone().requires_grad_(True)
    inner, outer = toy_losses(phi)
    return meta_gradient([REF_LOGITS], [phi], inner, outer, lr, steps, order)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- the losses


def test_outer_loss_is_log2_at_the_reference_and_hand_value_elsewhere() -> None:
    loss, stats = outer_preference_loss(REF_W, REF_W, REF_L, REF_L, BETA)
    assert_close(loss, torch.tensor(math.log(2.0), dtype=DT))
    assert float(stats.mean_margin) == 0.0
    # one pair: log-ratios +1 (chosen) and -1 (rejected): margin β (1 − (−1)) = 1
    one = torch.tensor([0.0], dtype=DT)
    margin = implicit_reward_margin(one + 1, one, one - 1, one, BETA)
    assert_close(margin, torch.tensor([1.0], dtype=DT))
    loss, stats = outer_preference_loss(one + 1, one, one - 1, one, BETA)
    assert_close(loss, torch.tensor(math.log1p(math.exp(-1.0)), dtype=DT))
    assert float(stats.accuracy) == 1.0


def test_exact_objective_matches_hand_values_and_its_gradient_the_formula() -> None:
    theta = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0]], dtype=DT, requires_grad=True)
    r = rewards(PHI0)
    loss, stats = kl_regularized_objective(theta, REF_LOGITS, r, BETA)
    p, q = theta.softmax(-1), REF_LOGITS.softmax(-1)
    kl = (p * (p / q).log()).sum(-1)
    assert_close(loss, (BETA * kl - (p * r).sum(-1)).mean())
    assert_close(stats.kl, kl.detach().mean())
    (grad,) = torch.autograd.grad(loss, theta)
    assert_close(grad, analytic_inner_grad(theta.detach(), PHI0))


def test_inner_optimum_is_the_tilted_reference_and_its_margin_the_reward_margin() -> None:
    theta = REF_LOGITS.clone().requires_grad_(True)
    r = rewards(PHI0)
    opt = torch.optim.SGD([theta], lr=5.0)
    for _ in range(3000):
        opt.zero_grad()
        kl_regularized_objective(theta, REF_LOGITS, r, BETA)[0].backward()
        opt.step()
    optimum = F.softmax(REF_LOGITS + r / BETA, dim=-1)  # π* ∝ π_ref exp(r / β)
    assert_close(theta.detach().softmax(-1), optimum, atol=1e-8, rtol=0)
    chosen, rejected = pair_logps(theta.detach())
    reward_margin = r[PAIRS[:, 0], PAIRS[:, 1]] - r[PAIRS[:, 0], PAIRS[:, 2]]
    assert_close(
        implicit_reward_margin(chosen, REF_W, rejected, REF_L, BETA),
        reward_margin,
        atol=1e-7,
        rtol=0,
    )


def test_sampled_surrogate_gradients_match_the_exact_objective_in_expectation() -> None:
    """∇_θ S and the mixed ∇_φ <∇_θ S, v> estimate those of the exact L_in (one context)."""
    prompts, n = 20000, 4
    theta = torch.tensor([0.2, -0.1, 0.4], dtype=DT, requires_grad=True)
    ref, feats = REF_LOGITS[0], FEATURES[0]
    phi = PHI0.clone().requires_grad_(True)
    v = torch.tensor([0.3, -1.0, 0.5], dtype=DT)
    gen = torch.Generator().manual_seed(0)
    actions = torch.multinomial(theta.detach().softmax(-1), prompts * n, True, generator=gen)
    logp = F.log_softmax(theta, -1)[actions]
    ref_logp = F.log_softmax(ref, -1)[actions]
    loss, stats = kl_regularized_surrogate(logp, ref_logp, (feats @ phi)[actions], BETA, n)
    (g_sampled,) = torch.autograd.grad(loss, theta, create_graph=True)
    (m_sampled,) = torch.autograd.grad((g_sampled * v).sum(), phi)
    exact, exact_stats = kl_regularized_objective(theta[None], ref[None], (feats @ phi)[None], BETA)
    (g_exact,) = torch.autograd.grad(exact, theta, create_graph=True)
    (m_exact,) = torch.autograd.grad((g_exact * v).sum(), phi)
    assert_close(g_sampled, g_exact, atol=0.01, rtol=0)
    assert_close(m_sampled, m_exact, atol=0.01, rtol=0)
    assert_close(stats.reward, exact_stats.reward, atol=0.01, rtol=0)
    assert_close(stats.kl, exact_stats.kl, atol=0.01, rtol=0)


def test_surrogate_rejects_rows_that_are_not_whole_groups() -> None:
    x = torch.zeros(5)
    with pytest.raises(ValueError, match="prompts x 2 samples"):
        kl_regularized_surrogate(x, x, x, 0.1, 2)


# ----------------------------------------------------------------------- meta-gradients


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_full_unroll_matches_finite_differences_of_the_bilevel_objective(steps: int) -> None:
    lr, eps = 0.8, 1e-6
    result = run("full", lr, steps)
    fd = torch.stack(
        [
            (
                explicit_bilevel(PHI0 + eps * e, lr, steps)
                - explicit_bilevel(PHI0 - eps * e, lr, steps)
            )
            / (2 * eps)
            for e in torch.eye(2, dtype=DT)
        ]
    )
    assert_close(result.grads[0], fd, atol=1e-8, rtol=1e-6)
    assert_close(result.outer_loss, explicit_bilevel(PHI0, lr, steps))
    assert result.grads[0].abs().max() > 1e-3  # a non-trivial gradient


@pytest.mark.parametrize("steps", [1, 4])
def test_full_unroll_matches_autograd_through_a_hand_written_loop(steps: int) -> None:
    phi = PHI0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(explicit_bilevel(phi, 0.8, steps), phi)
    assert_close(run("full", 0.8, steps).grads[0], expected, atol=1e-12, rtol=1e-10)


def test_adapted_policy_and_inner_stats_follow_the_loop() -> None:
    result = run("full", 0.8, 3)
    theta = REF_LOGITS.clone()
    for _ in range(3):
        theta = theta - 0.8 * analytic_inner_grad(theta, PHI0)
    assert_close(result.adapted[0], theta)
    assert [float(s.kl) for s in result.inner][0] == pytest.approx(0.0, abs=1e-12)  # π_0 = π_ref
    kls = [float(s.kl) for s in result.inner]
    assert kls == sorted(kls)  # moving away from the reference


def test_first_order_equals_full_unroll_for_one_inner_step() -> None:
    for lr in (0.1, 0.8, 3.0):
        assert_close(run("first", lr, 1).grads[0], run("full", lr, 1).grads[0], atol=1e-14, rtol=0)


def test_first_order_is_the_sum_of_mixed_derivatives_at_the_true_iterates() -> None:
    """−α Σ_k M_kᵀ v, with M_k = ∂g_k/∂φ by `torch.autograd.functional.jacobian`."""
    lr, steps = 0.8, 4
    thetas = [REF_LOGITS.clone()]
    for _ in range(steps):
        thetas.append(thetas[-1] - lr * analytic_inner_grad(thetas[-1], PHI0))
    theta_k = thetas[-1].clone().requires_grad_(True)
    chosen, rejected = pair_logps(theta_k)
    out = -F.logsigmoid(implicit_reward_margin(chosen, REF_W, rejected, REF_L, BETA)).mean()
    (v,) = torch.autograd.grad(out, theta_k)
    expected = torch.zeros(2, dtype=DT)
    for theta in thetas[:-1]:
        m = torch.autograd.functional.jacobian(lambda p, t=theta: analytic_inner_grad(t, p), PHI0)
        expected -= lr * torch.einsum("bad,ba->d", m, v)
    result = run("first", lr, steps)
    assert_close(result.grads[0], expected, atol=1e-12, rtol=1e-10)
    assert_close(result.adapted[0], thetas[-1])


def test_first_order_error_shrinks_with_the_inner_step_size() -> None:
    """Relative error O(α K ‖H‖): high cosine for small α, error roughly halving with α."""
    steps = 5
    errors = []
    for lr in (0.2, 0.1, 0.05):
        first, full = run("first", lr, steps).grads[0], run("full", lr, steps).grads[0]
        errors.append(float((first - full).norm() / full.norm()))
        if lr <= 0.1:
            assert cosine(first, full) > 0.999
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] / errors[1] < 0.6 and errors[1] / errors[0] < 0.6
    assert errors[0] > 1e-4  # K = 5 is not exact: the approximation is real


@pytest.mark.parametrize(("steps", "lr"), [(2, 0.1), (4, 0.05), (8, 0.05)])
def test_first_order_matches_finite_differences_within_its_error_bound(steps, lr) -> None:
    """The first-order meta-gradient against central differences of F(φ) after K inner
    steps: the relative error stays below 0.1 · α · K (its O(α K ‖H‖) bound on this toy,
    where it measures 0.05-0.09 · α · K), and is not zero (K > 1 drops the Hessian terms)."""
    eps = 1e-6
    fd = torch.stack(
        [
            (
                explicit_bilevel(PHI0 + eps * e, lr, steps)
                - explicit_bilevel(PHI0 - eps * e, lr, steps)
            )
            / (2 * eps)
            for e in torch.eye(2, dtype=DT)
        ]
    )
    first = run("first", lr, steps).grads[0]
    error = float((first - fd).norm() / fd.norm())
    assert 1e-4 < error < 0.1 * lr * steps
    assert cosine(first, fd) > 0.99


def test_first_order_is_exact_when_the_inner_loss_is_linear_in_theta() -> None:
    phi = PHI0.clone().requires_grad_(True)
    coupling = torch.tensor([[1.0, -2.0], [0.5, 0.3], [0.0, 1.0]], dtype=DT)  # (3, D)

    def inner(theta, k):
        loss = -(theta[0] * (coupling @ phi)).sum()  # H = 0
        zero = torch.zeros((), dtype=DT)
        return loss, InnerStats(zero, zero)

    def outer(theta):
        logp = F.log_softmax(theta[0], -1)
        return outer_preference_loss(logp[:1], logp[:1] * 0, logp[2:], logp[2:] * 0, BETA)

    theta0 = [torch.tensor([0.1, 0.2, -0.3], dtype=DT)]
    first = first_order_meta_gradient(theta0, [phi], inner, outer, 0.5, 4)
    full = full_unroll_meta_gradient(theta0, [phi], inner, outer, 0.5, 4)
    assert_close(first.grads[0], full.grads[0], atol=1e-14, rtol=0)


def test_unused_reward_parameters_get_zero_gradients() -> None:
    phi = PHI0.clone().requires_grad_(True)
    unused = torch.ones(3, dtype=DT, requires_grad=True)
    inner, outer = toy_losses(phi)
    for order in ("first", "full"):
        result = meta_gradient([REF_LOGITS], [phi, unused], inner, outer, 0.5, 2, order)
        assert torch.equal(result.grads[1], torch.zeros(3, dtype=DT))
        assert result.grads[0].abs().sum() > 0


def test_bad_order_and_step_count_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown meta-gradient order"):
        run("second", 0.1, 1)
    with pytest.raises(ValueError, match="at least one inner step"):
        run("full", 0.1, 0)
