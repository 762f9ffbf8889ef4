"""Config section `meta`: the meta-learned reward model of `ray-rlhf meta-rm` (Jia 2024,
arXiv 2402.14760; docs/algorithms.md §4, docs/meta_rm.md). `ray_rlhf.config` roots it under
`RLHFConfig` and re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ray_rlhf.typed_config import check as _check


@dataclass(frozen=True)
class MetaConfig:
    """Bilevel meta-training of a scalar reward model r_φ over the training domains."""

    outer_steps: int = 100
    """Outer (reward-model) updates; the run saves its state after every one."""
    domains_per_step: int = 2
    """Domains sampled per outer step; each runs its inner loop as its own Ray task."""
    inner_steps: int = 1
    """K: SGD steps of KL-regularized policy optimization under r_φ, from π_ref."""
    inner_lr: float = 1.0
    """α: inner SGD step size on the adapted policy parameters."""
    beta: float = 0.1
    """β: the inner KL coefficient and the scale of the outer implicit reward."""
    order: Literal["first", "full"] = "first"
    """Meta-gradient: `first` drops the inner θ→θ Jacobians (exact for K = 1, memory of
    one step), `full` differentiates through all K steps (memory grows with K)."""
    adapt: Literal["last_layers", "full"] = "last_layers"
    """Which policy parameters the inner loop adapts: the last `adapt_layers` decoder
    layers plus the final norm and LM head, or every parameter (small models only). LoRA
    is not implemented."""
    adapt_layers: int = 1
    """Decoder layers adapted with `adapt: last_layers`."""
    inner_prompts: int = 8
    """Prompts of the domain sampled per inner step."""
    n_samples: int = 4
    """Responses sampled per prompt per inner step (leave-one-out baseline)."""
    temperature: float = 1.0
    """Sampling temperature of the inner-loop responses."""
    outer_pairs: int = 32
    """The domain's held-in preference pairs in each outer loss (disjoint from the step's
    inner prompts)."""
    outer_lr: float = 1e-3
    """Adam learning rate of the reward-model parameters φ."""
    grad_clip: float = 1.0
    """Clip of the global norm of the domain-averaged meta-gradient; 0 disables."""
    rm_init_path: str | None = None
    """Scalar reward-model dir to start φ from (e.g. a `train-rm` output). None: the policy
    backbone with a fresh scalar head."""
    cpus_per_task: int = 1
    """CPUs (and torch threads) of each domain's inner-loop task."""

    def __post_init__(self) -> None:
        for name in ("outer_steps", "domains_per_step", "inner_steps", "adapt_layers"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("inner_prompts", "n_samples", "outer_pairs", "cpus_per_task"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(self.inner_lr > 0, "inner_lr", "must be > 0")
        _check(self.beta > 0, "beta", "must be > 0 (it scales the implicit reward)")
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.outer_lr > 0, "outer_lr", "must be > 0")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
