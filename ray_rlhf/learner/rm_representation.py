"""The reward model's pooled representation and the contrastive term on it.

Wang et al. 2024, arXiv 2401.06080; docs/algorithms.md §3c. The representation of a
response is the score head's input at its last real token: the backbone's final hidden
state, where a scalar reward model reads its score. The math is `algo.rm_contrastive`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ray_rlhf.algo.rm_contrastive import alignment, simcse_loss, swav_loss, uniformity
from ray_rlhf.config_rewards import RMContrastiveConfig

PROTOTYPES_KEY = "ray_rlhf_swav_prototypes"
"""Name of SwAV's (K, H) prototype parameter on the reward model."""


def attach_prototypes(model: torch.nn.Module, count: int, hidden_size: int, seed: int) -> None:
    """Register SwAV's prototypes as a parameter of `model`, unit rows from a seeded normal.

    On the model itself, DeepSpeed trains them with the model's optimizer and saves and
    restores them with its checkpoints. They are training state, not part of the exported
    reward model (`RMLearner.state_dict` leaves them out).

    Args:
        model: The reward model, before it is wrapped in an engine.
        count: K prototypes.
        hidden_size: H, the width of the pooled representation.
        seed: Seed of the initialization.
    """
    generator = torch.Generator().manual_seed(seed * 7919 + 1)
    weights = F.normalize(torch.randn(count, hidden_size, generator=generator), dim=-1)
    dtype = next(model.parameters()).dtype
    model.register_parameter(PROTOTYPES_KEY, torch.nn.Parameter(weights.to(dtype)))


@contextmanager
def captured_inputs(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the first positional input of every call of `module` inside the block.

    Used on the score head: its input is the (N, T, H) hidden state the values come from,
    with the autograd graph attached.
    """
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, inputs, _out: seen.append(inputs[0]))
    try:
        yield seen
    finally:
        handle.remove()


_DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)


@contextmanager
def forced_dropout(model: torch.nn.Module, p: float) -> Iterator[None]:
    """Run every dropout of `model` at rate `p` inside the block, whatever its config says.

    Sets the `p` of each dropout module (e.g. the one before a token-classification score
    head) and each numeric `attention_dropout` attribute: HF attention modules of the Llama
    family (Llama, Qwen2, Mistral, SmolLM2) read it on every call, and it is their only
    dropout (transformers 5.x `LlamaAttention.forward` passes `dropout=self.attention_dropout`
    in train mode to the attention function). Activation checkpointing is off inside the
    block (each module's `gradient_checkpointing` flag): its recompute would run in the
    backward, after the block, at the original rates (on the tiny Llama a CheckpointError,
    elsewhere possibly the gradients of another forward, silently). A model without any of
    these attributes runs unchanged. Everything is restored on exit, also on an exception.
    Dropout acts in train mode only.

    Args:
        model: The bare module (not a DeepSpeed engine).
        p: Dropout rate in [0, 1).
    """
    changes: list[tuple[torch.nn.Module, str, object, object]] = []  # module, name, own, forced
    for module in model.modules():
        own = vars(module)  # plain attributes only: submodules and properties are not in it
        if isinstance(module, _DROPOUTS):
            changes.append((module, "p", module.p, p))
        rate = own.get("attention_dropout")
        if isinstance(rate, int | float) and not isinstance(rate, bool):
            changes.append((module, "attention_dropout", rate, p))
        if own.get("gradient_checkpointing") is True:
            changes.append((module, "gradient_checkpointing", True, False))
    try:
        for module, name, _, forced in changes:
            setattr(module, name, forced)
        yield
    finally:
        for module, name, original, _ in changes:
            setattr(module, name, original)


def contrastive_term(
    cfg: RMContrastiveConfig,
    pooled_1: torch.Tensor,
    pooled_2: torch.Tensor,
    prototypes: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_cl between two views of the pooled states of P pairs, and its metrics.

    With `views: forwards` the two views come from a forward under `forced_dropout` and are
    used as they are. With `views: shared` both are the BT rows' pooled states, and each
    view gets its own dropout mask (`cfg.dropout`) here. With `target: differences` a
    pair's row is h_chosen - h_rejected of the same view.

    Args:
        cfg: `rm.contrastive` (kind other than `none`).
        pooled_1: (2P, H) pooled states, chosen rows then rejected rows, for view 1.
        pooled_2: (2P, H) the same rows for view 2 (the same tensor with `views: shared`).
        prototypes: (K, H) SwAV prototypes; None for SimCSE.

    Returns:
        The unweighted scalar L_cl, and `rm/contrastive_loss`,
        `rm/representation_alignment` (mean cosine of the two views) and `rm/uniformity`
        (of view 1; NaN with fewer than 2 rows).
    """
    h1, h2 = pooled_1.float(), pooled_2.float()
    if cfg.views == "shared":  # the views differ only by these two masks
        h1 = F.dropout(h1, cfg.dropout, training=True)
        h2 = F.dropout(h2, cfg.dropout, training=True)
    if cfg.target == "differences":
        h1, h2 = (chosen - rejected for chosen, rejected in (h1.chunk(2), h2.chunk(2)))
    if cfg.kind == "swav":
        assert prototypes is not None  # RMLearner attaches them for kind swav
        loss = swav_loss(h1, h2, prototypes.float(), cfg.tau)
    else:
        loss = simcse_loss(h1, h2, cfg.tau)
    h1, h2 = h1.detach(), h2.detach()
    spread = float(uniformity(h1)) if h1.shape[0] >= 2 else math.nan
    return loss, {
        "rm/contrastive_loss": float(loss.detach()),
        "rm/representation_alignment": float(alignment(h1, h2)),
        "rm/uniformity": spread,
    }
