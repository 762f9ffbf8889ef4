"""Many small reward models on the cluster: each is one Ray task training in-process.

Preference strength needs an ensemble of M reward models, the evidence grid dozens of
short runs. Each model is small and short, so a task per model
(`ray_rlhf.loops.rm_local.train_rm_local`, world size 1) is the cheap unit: the models run
side by side on as many CPUs (or learner nodes) as the cluster offers. Results come back as
they finish, so the caller saves each at once and a rerun skips what is saved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from ray_rlhf.config import RLHFConfig
from ray_rlhf.distributed.runtime import LEARNER_RESOURCE, custom_resource, worker_env_vars


@dataclass(frozen=True)
class LocalRMTask:
    """One reward model to train: config, start dir, pairs, what to score, seed.

    `train` and `score` hold tokenized pairs (`ray_rlhf.loops.rm.tokenize_pairs`);
    identical tensors of several tasks are shipped to the object store once each.
    """

    cfg: RLHFConfig
    model_dir: str
    train: dict[str, torch.Tensor]
    score: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    seed: int = 0
    prompt_free: bool = False


@ray.remote(max_retries=1)
def _train(task: LocalRMTask, train: dict, score: dict, threads: int) -> Any:
    from ray_rlhf.loops.rm_local import train_rm_local

    return train_rm_local(
        task.cfg,
        task.model_dir,
        train,
        score,
        seed=task.seed,
        threads=threads,
        prompt_free=task.prompt_free,
    )


def train_rms(tasks: Sequence[LocalRMTask]) -> Iterator[tuple[int, Any]]:
    """Train every task's reward model as parallel Ray tasks; yield results as they finish.

    Each task asks for `learner.cpus_per_worker` CPUs of its config (and the `learner`
    resource on clusters that have it).

    Yields:
        (index into `tasks`, `LocalRMResult`) in completion order.
    """
    refs: dict[int, Any] = {}  # id(tensor dict) -> object ref, so shared data goes up once

    def put(obj: Any) -> Any:
        if id(obj) not in refs:
            refs[id(obj)] = ray.put(obj)
        return refs[id(obj)]

    pending = {}
    for i, task in enumerate(tasks):
        threads = task.cfg.learner.cpus_per_worker
        options: dict[str, Any] = {
            "num_cpus": threads,
            "resources": custom_resource(LEARNER_RESOURCE, 1, task.cfg.resources.custom_resources),
            "runtime_env": {"env_vars": worker_env_vars() | {"OMP_NUM_THREADS": str(threads)}},
        }
        light = LocalRMTask(task.cfg, str(Path(task.model_dir).resolve()), {}, {}, task.seed,
                            task.prompt_free)  # fmt: skip
        ref = _train.options(**options).remote(light, put(task.train), put(task.score), threads)
        pending[ref] = i
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            yield index, ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def train_members(
    cfg: RLHFConfig,
    model_dir: str | Path,
    train: dict[str, torch.Tensor],
    score: dict[str, dict[str, torch.Tensor]],
    seeds: Sequence[int],
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """An ensemble: one reward model per seed on the same pairs (`train_rms`).

    Yields:
        (index into `seeds`, name -> (P,) margins on the `score` pair sets).
    """
    tasks = [LocalRMTask(cfg, str(model_dir), train, score, seed) for seed in seeds]
    for index, result in train_rms(tasks):
        yield index, result.margins
