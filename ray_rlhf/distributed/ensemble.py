"""Reward-model ensembles on the cluster: each member is one Ray task training in-process.

A member is small (one tiny reward model per process) and short, so a task per member
(`ray_rlhf.loops.rm_local.train_rm_local`, world size 1) is the cheap unit: M members run
side by side on as many CPUs (or learner nodes) as the cluster offers, each with its own
seed and data order. Results come back as they finish, so the caller can save each member
at once and a rerun skips the members already saved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from ray_rlhf.config import RLHFConfig
from ray_rlhf.distributed.runtime import LEARNER_RESOURCE, custom_resource, worker_env_vars


@ray.remote(max_retries=1)
def _train_member(
    cfg: RLHFConfig,
    model_dir: str,
    train: dict[str, torch.Tensor],
    score: dict[str, dict[str, torch.Tensor]],
    seed: int,
    threads: int,
) -> dict[str, torch.Tensor]:
    from ray_rlhf.loops.rm_local import train_rm_local

    return train_rm_local(cfg, model_dir, train, score, seed=seed, threads=threads).margins


def train_members(
    cfg: RLHFConfig,
    model_dir: str | Path,
    train: dict[str, torch.Tensor],
    score: dict[str, dict[str, torch.Tensor]],
    seeds: Sequence[int],
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Train one reward model per seed as parallel Ray tasks; yield results as they finish.

    Args:
        cfg: `rm` and `learner` of every member; each task asks for
            `learner.cpus_per_worker` CPUs (and the `learner` resource on clusters).
        model_dir: Where every member starts (absolute or visible to the workers).
        train: Tokenized training pairs, shared through the object store.
        score: Name -> tokenized pairs every member scores after training.
        seeds: One member per seed (head init and data order).

    Yields:
        (index into `seeds`, name -> (P,) margins) in completion order.
    """
    threads = cfg.learner.cpus_per_worker
    options: dict[str, Any] = {
        "num_cpus": threads,
        "resources": custom_resource(LEARNER_RESOURCE, 1, cfg.resources.custom_resources),
        "runtime_env": {"env_vars": worker_env_vars() | {"OMP_NUM_THREADS": str(threads)}},
    }
    train_ref, score_ref = ray.put(train), ray.put(score)
    model_dir = str(Path(model_dir).resolve())
    pending = {
        _train_member.options(**options).remote(
            cfg, model_dir, train_ref, score_ref, seed, threads
        ): i
        for i, seed in enumerate(seeds)
    }
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            yield index, ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
