"""Contrastive representation terms for the reward model, and the MetaRM update.

Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling"
(arXiv 2401.06080). docs/algorithms.md §3c: an unsupervised term on two dropout views of
the reward model's pooled representation, added to the BT loss as ``L = L_rm + beta L_cl``
(SimCSE, or SwAV with Sinkhorn codes). docs/algorithms.md §3d: MetaRM, one plain
gradient-ascent step on the reward spread ``J`` of policy samples before the BT gradient.

Shapes: ``B`` representations of width ``D`` (``h1``, ``h2`` are two views of the same
rows), ``K`` prototypes, ``P`` prompts with ``k`` responses each.
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

Aux = TypeVar("Aux")


def _check_views(h1: Tensor, h2: Tensor) -> None:
    """Raise ValueError unless ``h1`` and ``h2`` are two non-empty ``(B, D)`` views."""
    if h1.dim() != 2 or h1.shape != h2.shape or h1.shape[0] == 0:
        shapes = f"{tuple(h1.shape)}, {tuple(h2.shape)}"
        raise ValueError(f"need two non-empty (B, D) views of one shape, got {shapes}")


def simcse_loss(h1: Tensor, h2: Tensor, tau: float = 0.05) -> Tensor:
    """InfoNCE between two dropout views, the other rows of the batch as negatives.

    ``l_i = -log exp(cos(h1_i, h2_i) / tau) / sum_j exp(cos(h1_i, h2_j) / tau)``, the mean
    over ``i`` (Gao et al. 2021, SimCSE, eq. 1; Wang et al. 2024, arXiv 2401.06080;
    docs/algorithms.md §3c).

    OPEN (the paper writes one direction): not symmetrized. ``h1`` is the anchor and
    ``h2`` the candidates, as in SimCSE; the symmetric variant would average this with
    ``simcse_loss(h2, h1)``.

    Args:
        h1: First view ``(B, D)``.
        h2: Second view ``(B, D)`` of the same rows.
        tau: Temperature, > 0.

    Returns:
        Scalar loss; ``log B`` when all cosines are equal, 0 for ``B = 1``.

    Raises:
        ValueError: If the views differ in shape or ``tau <= 0``.
    """
    _check_views(h1, h2)
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    cosine = F.normalize(h1, dim=-1) @ F.normalize(h2, dim=-1).T  # (B, B)
    targets = torch.arange(h1.shape[0], device=h1.device)
    return F.cross_entropy(cosine / tau, targets)


def alignment(h1: Tensor, h2: Tensor) -> Tensor:
    """Mean cosine similarity of the matched rows of two views (1: identical directions).

    A diagnostic in the spirit of Wang & Isola 2020 (arXiv 2005.10242), whose alignment
    ``E ||h1_i - h2_i||^2 = 2 - 2 cos`` on normalized rows is an affine map of this one.

    Args:
        h1: First view ``(B, D)``.
        h2: Second view ``(B, D)``.

    Returns:
        Scalar in [-1, 1].
    """
    _check_views(h1, h2)
    return F.cosine_similarity(h1, h2, dim=-1).mean()


def uniformity(h: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{i<j} exp(-t ||h_i - h_j||^2)`` over normalized rows (Wang & Isola 2020).

    Lower is more uniform on the sphere: 0 when all rows coincide; with ``t = 2``, ``-4``
    for two orthogonal rows and ``-8`` for two antipodal ones.

    Args:
        h: Representations ``(B, D)``, ``B >= 2``; normalized here.
        t: Scale of the Gaussian potential (2 in the paper).

    Returns:
        Scalar <= 0.

    Raises:
        ValueError: If ``B < 2`` (no pair).
    """
    if h.dim() != 2 or h.shape[0] < 2:
        raise ValueError(f"uniformity needs (B, D) with B >= 2, got {tuple(h.shape)}")
    sq_dist = torch.pdist(F.normalize(h, dim=-1)).pow(2)  # (B (B - 1) / 2,) pairs i < j
    return torch.logsumexp(-t * sq_dist, dim=0) - math.log(sq_dist.numel())


@torch.no_grad()
def sinkhorn_codes(scores: Tensor, n_iters: int = 3, eps: float = 0.05) -> Tensor:
    """Soft assignments of ``B`` rows to ``K`` prototypes with equal prototype marginals.

    The Sinkhorn-Knopp iteration of SwAV (Caron et al. 2020, arXiv 2006.09882, eq. 3 and
    its ``distributed_sinkhorn``) on ``exp(scores / eps)``: alternately scale every
    prototype (column) to total ``B / K`` and every row to total 1. Computed in log space
    so a small ``eps`` cannot overflow. The last scaling is over rows, so rows sum to 1
    exactly and columns to ``B / K`` up to the iteration's convergence. No gradient
    (SwAV's stop-gradient on the codes). With several ranks the codes are per-rank
    (local batch), where SwAV pools the batch across GPUs.

    Args:
        scores: Row-prototype similarities ``(B, K)``, typically cosines.
        n_iters: Sinkhorn iterations (SwAV uses 3), >= 1.
        eps: Entropic regularization; smaller gives sharper codes.

    Returns:
        Codes ``(B, K)``, non-negative, detached.

    Raises:
        ValueError: If ``n_iters < 1`` or ``eps <= 0``.
    """
    if n_iters < 1 or eps <= 0:
        raise ValueError(f"need n_iters >= 1 and eps > 0, got {n_iters}, {eps}")
    rows, prototypes = scores.shape
    log_q = scores.float() / eps  # (B, K)
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(rows / prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # each row sums to 1
    return log_q.exp().to(scores.dtype)


def swav_loss(
    z1: Tensor,
    z2: Tensor,
    prototypes: Tensor,
    tau: float = 0.05,
    *,
    eps: float = 0.05,
    n_iters: int = 3,
) -> Tensor:
    """Swapped prediction: each view predicts the other view's Sinkhorn code.

    ``s_v = norm(z_v) norm(C)^T`` ``(B, K)``, ``q_v = sinkhorn_codes(s_v)`` (no gradient),
    ``L = -1/2 mean_i [q2_i . log softmax(s1_i / tau) + q1_i . log softmax(s2_i / tau)]``
    (Caron et al. 2020, arXiv 2006.09882, eq. 1-2; Wang et al. 2024, arXiv 2401.06080;
    docs/algorithms.md §3c). The prototypes are normalized inside the loss (gradients flow
    through the normalization) instead of SwAV's in-place renormalization after each
    optimizer step, so the function stays pure; there is no projection head.

    Args:
        z1: First view ``(B, D)``.
        z2: Second view ``(B, D)``.
        prototypes: Learned prototype vectors ``C`` ``(K, D)``.
        tau: Softmax temperature of the predictions, > 0.
        eps: Sinkhorn regularization of the codes.
        n_iters: Sinkhorn iterations.

    Returns:
        Scalar loss.

    Raises:
        ValueError: If the shapes disagree or ``tau <= 0``.
    """
    _check_views(z1, z2)
    if prototypes.dim() != 2 or prototypes.shape[1] != z1.shape[1]:
        raise ValueError(f"prototypes must be (K, {z1.shape[1]}), got {tuple(prototypes.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    unit_prototypes = F.normalize(prototypes, dim=-1)  # (K, D)
    s1 = F.normalize(z1, dim=-1) @ unit_prototypes.T  # (B, K)
    s2 = F.normalize(z2, dim=-1) @ unit_prototypes.T
    q1, q2 = sinkhorn_codes(s1, n_iters, eps), sinkhorn_codes(s2, n_iters, eps)
    predict_2 = (q2 * F.log_softmax(s1 / tau, dim=-1)).sum(-1)  # (B,) view 1 predicts q2
    predict_1 = (q1 * F.log_softmax(s2 / tau, dim=-1)).sum(-1)
    return -0.5 * (predict_1 + predict_2).mean()


def meta_difference(scores: Tensor, k: int) -> Tensor:
    """MetaRM's difference objective ``J``: how spread out the rewards of a prompt's samples
    are (Wang et al. 2024, arXiv 2401.06080; Dou et al. 2024, arXiv 2405.00438, eq. 2;
    docs/algorithms.md §3d).

    ``J = mean_p (2 / k^2) sum_{i<j} sigma(|r_pi - r_pj|)``. Each prompt contributes
    ``(k - 1) / k`` times a mean over its pairs of ``sigma(|.|)`` in [1/2, 1). OPEN: the
    paper writes the sum for one prompt; the mean over the ``P`` prompts of a batch is the
    choice here, so ``J`` does not grow with the batch.

    Args:
        scores: Rewards ``(P k,)``, prompt-major: rows ``p k .. p k + k - 1`` are the
            ``k`` responses of prompt ``p``.
        k: Responses per prompt, >= 2.

    Returns:
        Scalar ``J``.

    Raises:
        ValueError: If ``k < 2`` or ``scores`` is not ``P k`` values with ``P >= 1``.
    """
    if k < 2 or scores.dim() != 1 or scores.numel() == 0 or scores.numel() % k:
        raise ValueError(f"need (P k,) scores with k >= 2, got {tuple(scores.shape)}, k={k}")
    r = scores.view(-1, k)  # (P, k)
    spread = torch.sigmoid((r[:, :, None] - r[:, None, :]).abs())  # (P, k, k)
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=r.device), diagonal=1)
    return (2.0 / k**2) * spread[:, upper].sum(-1).mean()


class MetaStepStats(NamedTuple):
    """Detached scalars of one :func:`meta_rm_backward`.

    Attributes:
        meta_difference: ``J(theta)`` on the meta batch, before the ascent.
        meta_difference_after: ``J(theta')`` on the same batch, after it.
        meta_grad_norm: ``||grad J(theta)||`` (after ``reduce_mean``).
        task_loss: The task loss at ``theta'``.
    """

    meta_difference: Tensor
    meta_difference_after: Tensor
    meta_grad_norm: Tensor
    task_loss: Tensor


def meta_rm_backward(
    params: Sequence[Tensor],
    meta_objective: Callable[[], Tensor],
    task_loss: Callable[[], tuple[Tensor, Aux]],
    eta: float,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    reduce_mean: Callable[[list[Tensor]], None] | None = None,
) -> tuple[MetaStepStats, Aux]:
    """MetaRM's gradient: ascend on ``J``, backpropagate the task loss there, come back.

    ``theta' = theta + eta grad J(theta)`` (plain SGD ascent, outside any optimizer),
    ``g = grad_theta' L(theta')`` written by ``backward`` (into ``.grad`` or an engine's
    buffers), then ``theta`` is restored bit for bit, so the optimizer's next step applies
    ``g`` at ``theta`` (Wang et al. 2024, arXiv 2401.06080; docs/algorithms.md §3d). The
    caller steps the optimizer; Adam sees only ``g``. ``grad J`` is taken with
    ``torch.autograd.grad``: it never touches ``.grad`` or gradient hooks.

    Args:
        params: The trainable parameters ``theta``, full (not partitioned) tensors.
        meta_objective: Returns ``J`` on the meta batch at the current parameters.
        task_loss: Returns ``(loss, aux)`` on the task batch at the current parameters;
            ``aux`` (e.g. metrics) is passed back.
        eta: Ascent step size, >= 0.
        backward: Backpropagates a loss (``engine.backward`` under DeepSpeed).
        reduce_mean: Averages the list of ``grad J`` tensors in place over data-parallel
            ranks, so every rank takes the same ascent step; None for one process.

    Returns:
        ``(MetaStepStats, aux)``.
    """
    params = list(params)
    objective = meta_objective()
    raw = torch.autograd.grad(objective, params, allow_unused=True)  # no .grad, no hooks
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw, strict=True)]
    if reduce_mean is not None:
        reduce_mean(grads)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g.to(p.dtype), alpha=eta)
            after = meta_objective()
        loss, aux = task_loss()
        backward(loss)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    stats = MetaStepStats(objective.detach(), after.detach(), norm, loss.detach())
    return stats, aux
