"""The per-domain inner loops of `ray-rlhf meta-rm` as parallel Ray tasks.

Each sampled domain of an outer step is one task running
`ray_rlhf.learner.meta_rm.DomainAdapter.meta_gradient` (world size 1, no process group):
the domains are independent given φ, so they run side by side on as many CPUs (or learner
nodes) as the cluster offers, and the driver only averages what comes back. φ goes up to
the object store once per outer step and is shared by the step's tasks.

A worker process keeps its loaded adapter (frozen π_ref and the reward-model module) for
the next task with the same `AdapterSpec`; every task brings the current φ, so no state
outlives a task except those immutable loads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from ray_rlhf.config_meta import MetaConfig
from ray_rlhf.distributed.runtime import (
    LEARNER_RESOURCE,
    CustomResourceMode,
    custom_resource,
    worker_env_vars,
)
from ray_rlhf.learner.meta_rm import DomainAdapter, DomainBatch, DomainResult


@dataclass(frozen=True)
class AdapterSpec:
    """What a task needs to build its `DomainAdapter` (hashable: the worker's cache key)."""

    policy_dir: str
    """π_ref, absolute path."""
    rm_dir: str
    """The reward model's architecture (absolute path); weights come with each task."""
    cfg: MetaConfig
    max_tokens: int
    """Longest sampled response."""


@functools.lru_cache(maxsize=1)
def _adapter(spec: AdapterSpec) -> DomainAdapter:
    return DomainAdapter(spec.policy_dir, spec.rm_dir, spec.cfg, spec.max_tokens)


@ray.remote(max_retries=1)
def _meta_gradient(
    spec: AdapterSpec, weights: dict[str, torch.Tensor], batch: DomainBatch, threads: int
) -> DomainResult:
    torch.set_num_threads(threads)
    return _adapter(spec).meta_gradient(weights, batch)


def domain_meta_gradients(
    spec: AdapterSpec,
    weights: dict[str, torch.Tensor],
    batches: Sequence[DomainBatch],
    custom_resources: CustomResourceMode = "auto",
) -> list[DomainResult]:
    """Every batch's meta-gradient at φ = `weights`, one Ray task per domain, in order.

    Each task asks for `meta.cpus_per_task` CPUs (and the `learner` resource on clusters
    that have it) and uses that many torch threads.
    """
    threads = spec.cfg.cpus_per_task
    options: dict[str, Any] = {
        "num_cpus": threads,
        "resources": custom_resource(LEARNER_RESOURCE, 1, custom_resources),
        "runtime_env": {"env_vars": worker_env_vars() | {"OMP_NUM_THREADS": str(threads)}},
    }
    shared = ray.put(weights)
    refs = [_meta_gradient.options(**options).remote(spec, shared, b, threads) for b in batches]
    try:
        return ray.get(refs)
    except BaseException:  # one domain failed (or Ctrl-C): stop the others
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
