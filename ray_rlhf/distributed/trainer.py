"""The one place a Ray Train `TorchTrainer` is built for the learners (SFT, PPO, RM).

Retries are for crashes and lost nodes, not for user errors. A `UserError` raised in a
worker (or in a Ray actor the worker called, e.g. a reward rule that raises or returns NaN)
would fail again after a restart, so the worker records it in the run's `logs/` dir before it
raises, a controller callback that sees the record ends the run without a retry (Ray Train
2.60 retries every worker error up to `max_failures`, but not an error raised by a callback),
and the driver raises the recorded error as a `WorkerUserError`.
"""

from __future__ import annotations

import functools
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.exceptions import RayTaskError
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_rlhf.config import RLHFConfig
from ray_rlhf.distributed.checkpointing import STORAGE_KEY
from ray_rlhf.distributed.runtime import LEARNER_RESOURCE, custom_resource
from ray_rlhf.errors import UserError
from ray_rlhf.logs import log_to_stdout
from ray_rlhf.progress import StageProgress, follow_metrics

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
    progress: StageProgress | None = None,
) -> Any:
    """Run `loop` on `learner.num_workers` Ray Train workers and return the `Result`.

    Checkpoints go to `run_dir/ray_train/<name>`; a rerun with the same run dir and name
    resumes from the latest one (Ray Train restores it into `ray.train.get_checkpoint()`),
    and up to `learner.max_failures` worker-group failures restart from it. Paths inside
    `loop_config` must be absolute: workers run in their own working directory. With
    `progress`, the driver draws the stage's bar from the rows rank 0 writes to
    `loop_config["metrics_dir"]` (`ray_rlhf.progress.follow_metrics`).

    Raises:
        WorkerUserError: A worker raised a `UserError`; the run stopped without a retry.
    """
    # Ray Train's controller drains each worker's one-slot report queue once per health
    # check (2 s by default), so a `ray.train.report` that comes sooner blocks the loop until
    # the next poll: tiny-model PPO iterations of ~0.4 s took ~2 s (benchmarks/, README
    # "Performance"). Ray Train passes the driver's value on to its controller.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    record = (run_dir / "logs" / f"{name}_user_error.json").resolve()
    storage = (run_dir / "ray_train").resolve()
    loop_config = {**loop_config, STORAGE_KEY: str(storage / name)}
    record.unlink(missing_ok=True)
    trainer = TorchTrainer(
        _recording_user_errors(loop, record),
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
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.learner.max_failures),
            callbacks=[_StopOnUserError(record)],
        ),
    )
    try:
        with follow_metrics(progress, Path(loop_config["metrics_dir"])):
            return trainer.fit()
    except ray.train.TrainingFailedError as err:
        if not record.is_file():
            raise
        raise WorkerUserError.from_record(record) from err


class WorkerUserError(UserError):
    """A `UserError` a Ray Train worker raised: its kind, message and hint, and the worker's
    traceback as `details`."""

    def __init__(self, kind: str, message: str, hint: str, details: str) -> None:
        super().__init__(message)
        self.kind, self.hint, self.details = kind, hint, details

    @classmethod
    def from_record(cls, record: Path) -> WorkerUserError:
        """The error a worker wrote to `record` (see `_recording_user_errors`)."""
        fields = json.loads(record.read_text())
        return cls(fields["kind"], fields["message"], fields["hint"], fields["traceback"])


def _user_error(err: BaseException) -> UserError | None:
    """The `UserError` behind `err`: itself, or what a Ray actor task raised."""
    if isinstance(err, RayTaskError):
        err = err.cause
    return err if isinstance(err, UserError) else None


def _recording_user_errors(
    loop: Callable[[dict[str, Any]], None], record: Path
) -> Callable[[dict[str, Any]], None]:
    """`loop`, writing a `UserError` it raises to `record` (JSON) before re-raising it."""

    @functools.wraps(loop)
    def run(config: dict[str, Any]) -> None:
        try:
            loop(config)
        except Exception as err:
            user_error = _user_error(err)
            if user_error is not None:
                fields = {
                    "kind": user_error.kind,
                    "message": str(user_error),
                    "hint": user_error.hint,
                    "traceback": traceback.format_exc(),
                }
                tmp = record.with_name(f".{record.name}.{os.getpid()}")
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(fields))
                os.replace(tmp, record)
            raise

    return run


class _StopOnUserError(ray.train.UserCallback):
    """Runs in Ray Train's controller: after a worker error, end the run without a retry if
    a worker recorded a user error. Ray Train retries worker errors, but treats an error
    raised by a callback as a controller error, which it does not retry."""

    def __init__(self, record: Path) -> None:
        self.record = record

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        if self.record.is_file():
            raise RuntimeError(f"a learner raised a user error (recorded in {self.record})")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the learner process group (a collective)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def setup_worker(cfg: RLHFConfig) -> tuple[int, int]:
    """Start of every learner loop: thread count = the CPUs the worker requested (docs/cpu_stack.md
    "Threads"), seeded torch, `ray_rlhf` log lines to the worker's stdout; returns (rank,
    world size)."""
    log_to_stdout()
    torch.set_num_threads(cfg.learner.cpus_per_worker)
    torch.manual_seed(cfg.run.seed)
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()
