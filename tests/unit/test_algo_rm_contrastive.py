"""Contrastive RM terms and MetaRM (Wang et al. 2024, §3c-3d) against hand-computed values."""

import math
from itertools import combinations

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.algo.rm_contrastive import (
    alignment,
    meta_difference,
    meta_rm_backward,
    simcse_loss,
    sinkhorn_codes,
    swav_loss,
    uniformity,
)


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_simcse_2x2_hand_computed() -> None:
    h1 = f64([[1.0, 0.0], [0.0, 1.0]])
    # cosines: h1_0 with h2_0 1/sqrt 2, with h2_1 0; h1_1 with h2_0 1/sqrt 2, with h2_1 1
    h2 = f64([[1.0, 1.0], [0.0, 3.0]])
    tau = 0.5  # logits: [[sqrt 2, 0], [sqrt 2, 2]]
    s = math.sqrt(2.0)
    l0 = -math.log(math.exp(s) / (math.exp(s) + 1.0))
    l1 = -math.log(math.exp(2.0) / (math.exp(s) + math.exp(2.0)))
    assert_close(simcse_loss(h1, h2, tau), f64((l0 + l1) / 2))


def test_simcse_3x3_hand_computed_and_not_symmetrized() -> None:
    h1 = torch.eye(3, dtype=torch.float64)
    h2 = f64([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # cosines diag(1, 1, -1)
    e = math.e
    l_pos = -math.log(e / (e + 2.0))  # rows 0, 1: one cosine 1, two cosines 0
    l_neg = -math.log((1 / e) / (1 / e + 2.0))  # row 2: its own cosine is -1
    assert_close(simcse_loss(h1, h2, tau=1.0), f64((2 * l_pos + l_neg) / 3))
    h2b = f64([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert not torch.allclose(simcse_loss(h1, h2b, 1.0), simcse_loss(h2b, h1, 1.0))


def test_simcse_is_scale_free_and_zero_for_one_row() -> None:
    h1, h2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert_close(simcse_loss(3.0 * h1, 0.5 * h2), simcse_loss(h1, h2))
    assert_close(simcse_loss(h1[:1], h2[:1]), f64(0.0))
    same = torch.ones(5, 2, dtype=torch.float64)  # every cosine 1: log B
    assert_close(simcse_loss(same, same), f64(math.log(5)))


@pytest.mark.parametrize(
    ("h1", "h2", "tau"),
    [
        (torch.zeros(2, 3), torch.zeros(3, 3), 0.05),
        (torch.zeros(0, 3), torch.zeros(0, 3), 0.05),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0),
    ],
)
def test_simcse_rejects_bad_input(h1: torch.Tensor, h2: torch.Tensor, tau: float) -> None:
    with pytest.raises(ValueError):
        simcse_loss(h1, h2, tau)


def test_alignment_and_uniformity_hand_computed() -> None:
    h1 = f64([[1.0, 0.0], [0.0, 2.0]])
    h2 = f64([[1.0, 1.0], [0.0, -1.0]])
    assert_close(alignment(h1, h2), f64((1 / math.sqrt(2) - 1.0) / 2))
    assert_close(uniformity(f64([[1.0, 0.0], [0.0, 5.0]])), f64(-4.0))  # orthogonal
    assert_close(uniformity(f64([[1.0, 0.0], [-2.0, 0.0]])), f64(-8.0))  # antipodal
    assert_close(uniformity(f64([[1.0, 1.0], [2.0, 2.0]])), f64(0.0))  # one direction


def test_uniformity_matches_a_loop_over_pairs() -> None:
    h = torch.randn(6, 4, dtype=torch.float64)
    unit = h / h.norm(dim=-1, keepdim=True)
    pairs = combinations(range(6), 2)
    terms = [math.exp(-2.0 * float((unit[i] - unit[j]).pow(2).sum())) for i, j in pairs]
    assert_close(uniformity(h), f64(math.log(sum(terms) / len(terms))))
    with pytest.raises(ValueError):
        uniformity(h[:1])


def sinkhorn_reference(scores: torch.Tensor, n_iters: int, eps: float) -> torch.Tensor:
    """SwAV's `distributed_sinkhorn` on one process, written as in the SwAV code."""
    q = torch.exp(scores / eps).T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_swav_and_has_uniform_marginals() -> None:
    scores = torch.randn(6, 3, dtype=torch.float64).clamp(-1, 1)
    codes = sinkhorn_codes(scores, n_iters=3, eps=0.5)
    assert_close(codes, sinkhorn_reference(scores, 3, 0.5))
    assert_close(codes.sum(1), torch.ones(6, dtype=torch.float64))  # rows: exactly 1
    assert bool((codes >= 0).all())
    converged = sinkhorn_codes(scores, n_iters=500, eps=0.5)
    assert_close(converged.sum(0), torch.full((3,), 6 / 3, dtype=torch.float64))  # B / K
    assert_close(converged.sum(1), torch.ones(6, dtype=torch.float64))


def test_sinkhorn_is_stable_at_small_eps_and_detached() -> None:
    scores = torch.tensor([[1.0, -1.0], [0.9, -0.9], [-1.0, 1.0], [-0.8, 0.8]], requires_grad=True)
    codes = sinkhorn_codes(scores, n_iters=3, eps=0.01)  # exp(100) would overflow float32
    assert bool(torch.isfinite(codes).all()) and not codes.requires_grad
    assert_close(codes.sum(0), torch.full((2,), 2.0), atol=1e-4, rtol=0)
    assert codes.argmax(1).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        sinkhorn_codes(scores, n_iters=0)


def swav_reference(z1, z2, prototypes, tau, eps, n_iters) -> torch.Tensor:
    """The swapped-prediction loss with one loop over the rows."""
    c = prototypes / prototypes.norm(dim=-1, keepdim=True)
    s1 = (z1 / z1.norm(dim=-1, keepdim=True)) @ c.T
    s2 = (z2 / z2.norm(dim=-1, keepdim=True)) @ c.T
    q1 = sinkhorn_reference(s1.detach(), n_iters, eps)
    q2 = sinkhorn_reference(s2.detach(), n_iters, eps)
    total = 0.0
    for i in range(z1.shape[0]):
        p1 = torch.softmax(s1[i] / tau, dim=0)
        p2 = torch.softmax(s2[i] / tau, dim=0)
        total = total - 0.5 * ((q2[i] * p1.log()).sum() + (q1[i] * p2.log()).sum())
    return total / z1.shape[0]


def test_swav_matches_a_row_loop_and_trains_the_prototypes() -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    z2 = z1 + 0.1 * torch.randn(5, 4, dtype=torch.float64, generator=gen)
    prototypes = torch.randn(3, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    loss = swav_loss(z1, z2, prototypes, tau=0.1, eps=0.5, n_iters=3)
    assert_close(loss, swav_reference(z1, z2, prototypes, 0.1, 0.5, 3))
    loss.backward()
    assert prototypes.grad is not None and bool(prototypes.grad.abs().sum() > 0)
    with pytest.raises(ValueError):
        swav_loss(z1, z2, prototypes[:, :3])


def test_meta_difference_hand_computed_and_against_a_double_loop() -> None:
    assert_close(meta_difference(f64([1.0, 3.0]), k=2), f64(0.5 * sigmoid(2.0)))
    scores = torch.randn(12, dtype=torch.float64)
    for k in (2, 3, 4):
        per_prompt = []
        for p in range(12 // k):
            r = scores[p * k : (p + 1) * k].tolist()
            pairs = sum(sigmoid(abs(r[i] - r[j])) for i in range(k) for j in range(i + 1, k))
            per_prompt.append(2.0 / k**2 * pairs)
        assert_close(meta_difference(scores, k), f64(sum(per_prompt) / len(per_prompt)))


def test_meta_difference_pushes_rewards_apart() -> None:
    scores = f64([0.0, 0.5, 2.0]).requires_grad_(True)
    meta_difference(scores, k=3).backward()
    assert scores.grad is not None
    assert bool(scores.grad[0] < 0) and bool(scores.grad[2] > 0)  # ascent spreads them


@pytest.mark.parametrize(("n", "k"), [(4, 1), (5, 2), (0, 2)])
def test_meta_difference_rejects_bad_sizes(n: int, k: int) -> None:
    with pytest.raises(ValueError):
        meta_difference(torch.zeros(n), k)


# MetaRM on a 2-parameter linear "RM" r(x) = w . x. Meta batch: one prompt, k = 2 responses
# with features s1 = (1, 0), s2 = (0, 1), so J(w) = (2/4) sigma(|w0 - w1|). Task batch: one
# pair with feature gap d = x_w - x_l = (1, 1), so L(w) = -log sigma(w0 + w1).
S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
D = torch.tensor([[1.0, 1.0]])


def reference_meta_gradient(w: list[float], eta: float) -> tuple[list[float], float]:
    """Hand-derived: theta' = w + eta grad J(w); g = grad L(theta')."""
    gap = w[0] - w[1]
    dj = 0.5 * sigmoid(abs(gap)) * (1 - sigmoid(abs(gap))) * math.copysign(1.0, gap)
    ascended = [w[0] + eta * dj, w[1] - eta * dj]
    dl = -(1 - sigmoid(ascended[0] + ascended[1]))  # dL/d(w0 + w1) at theta'
    return [dl, dl], math.hypot(dj, dj)


def linear_rm(w: list[float]) -> torch.nn.Linear:
    rm = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        rm.weight.copy_(torch.tensor([w]))
    return rm


def run_meta_step(rm: torch.nn.Linear, eta: float, reduce_mean=None):
    def meta_objective() -> torch.Tensor:
        return meta_difference(rm(S).squeeze(-1), k=2)

    def task_loss() -> tuple[torch.Tensor, str]:
        return -torch.nn.functional.logsigmoid(rm(D).squeeze(-1)).mean(), "aux"

    return meta_rm_backward(
        list(rm.parameters()), meta_objective, task_loss, eta, reduce_mean=reduce_mean
    )


def test_meta_rm_update_equals_the_two_step_reference() -> None:
    w, eta, lr = [0.8, -0.4], 2.0, 0.1
    rm = linear_rm(w)
    stats, aux = run_meta_step(rm, eta)
    g, grad_norm = reference_meta_gradient(w, eta)
    assert aux == "aux"
    assert_close(rm.weight.detach(), torch.tensor([w]))  # theta restored exactly
    assert_close(rm.weight.grad, torch.tensor([g]))  # only the task gradient, at theta'
    assert_close(stats.meta_grad_norm, torch.tensor(grad_norm))
    assert_close(stats.meta_difference, torch.tensor(0.5 * sigmoid(1.2)))
    assert bool(stats.meta_difference_after > stats.meta_difference)  # the ascent raised J
    torch.optim.SGD(rm.parameters(), lr=lr).step()  # g applied at theta
    assert_close(rm.weight.detach(), torch.tensor([[w[0] - lr * g[0], w[1] - lr * g[1]]]))


def test_adam_sees_only_the_task_gradient_at_theta_prime() -> None:
    w, eta = [0.3, 0.1], 5.0
    rm = linear_rm(w)
    run_meta_step(rm, eta)
    torch.optim.Adam(rm.parameters(), lr=0.01).step()
    reference = linear_rm(w)
    reference.weight.grad = torch.tensor([reference_meta_gradient(w, eta)[0]])
    torch.optim.Adam(reference.parameters(), lr=0.01).step()
    assert_close(rm.weight, reference.weight)


def test_meta_rm_with_eta_zero_is_plain_backprop_and_reduce_scales_the_ascent() -> None:
    w = [0.8, -0.4]
    rm = linear_rm(w)
    run_meta_step(rm, 0.0)
    assert_close(rm.weight.grad, torch.tensor([reference_meta_gradient(w, 0.0)[0]]))

    def halve(grads: list[torch.Tensor]) -> None:  # what a mean over 2 ranks would do
        for g in grads:
            g.mul_(0.5)

    halved, plain = linear_rm(w), linear_rm(w)
    run_meta_step(halved, 2.0, reduce_mean=halve)
    run_meta_step(plain, 1.0)
    assert_close(halved.weight.grad, plain.weight.grad)


def test_meta_rm_restores_theta_when_the_task_loss_fails() -> None:
    rm = linear_rm([0.8, -0.4])

    def broken() -> tuple[torch.Tensor, None]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        meta_rm_backward(
            list(rm.parameters()), lambda: meta_difference(rm(S).squeeze(-1), 2), broken, 3.0
        )
    assert_close(rm.weight.detach(), torch.tensor([[0.8, -0.4]]))
