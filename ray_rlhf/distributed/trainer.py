"""The one place a Ray Train `TorchTrainer` is built for the learners (SFT, PPO, RM)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_rlhf.config import RLHFConfig
from ray_rlhf.distributed.runtime import LEARNER_RESOURCE, custom_resource

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.1"
"""How often Ray Train's controller polls the workers (and collects their reports)."""


def fit_learners(
    cfg: RLHFConfig,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    run_dir: Path,
    name: str,
) -> Any:
    """Run `loop` on `learner.num_workers` Ray Train workers and return the `Result`.

    Checkpoints go to `run_dir/ray_train/<name>`; a rerun with the same run dir and name
    resumes from the latest one (Ray Train restores it into `ray.train.get_checkpoint()`),
    and up to `learner.max_failures` worker-group failures restart from it. Paths inside
    `loop_config` must be absolute: workers run in their own working directory.
    """
    # Ray Train's controller drains each worker's one-slot report queue once per health
    # check (2 s by default), so a `ray.train.report` that comes sooner blocks the loop until
    # the next poll: tiny-model PPO iterations of ~0.4 s took ~2 s (benchmarks/, README
    # "Performance"). Ray Train passes the driver's value on to its controller.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.learner.num_workers,
            use_gpu=cfg.learner.use_gpu,
            resources_per_worker={
                "CPU": cfg.learner.cpus_per_worker,
                **custom_resource(LEARNER_RESOURCE, 1, cfg.resources.custom_resources),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str((run_dir / "ray_train").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.learner.max_failures),
        ),
    )
    return trainer.fit()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the learner process group (a collective)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def setup_worker(cfg: RLHFConfig) -> tuple[int, int]:
    """Start of every learner loop: thread count = the CPUs the worker requested (docs/cpu_stack.md
    "Threads"), seeded torch; returns (rank, world size)."""
    torch.set_num_threads(cfg.learner.cpus_per_worker)
    torch.manual_seed(cfg.run.seed)
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()
