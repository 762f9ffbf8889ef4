"""Starting or joining Ray, and the environment every actor / Ray Train worker gets."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import ray

from ray_rlhf.config import ResourcesConfig
from ray_rlhf.distributed import reaper
from ray_rlhf.logs import RAY_LOGS, driver_log, shows_infrastructure_logs

logger = logging.getLogger(__name__)

# Settings that must reach every process the project starts (see README "Environment").
_PROPAGATED = (
    "DS_ACCELERATOR",
    "TORCH_EXTENSIONS_DIR",
    "TRITON_CACHE_DIR",
    "VLLM_CACHE_ROOT",
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TMPDIR",
    "MPLCONFIGDIR",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "TOKENIZERS_PARALLELISM",
    "PYTHONDONTWRITEBYTECODE",
)


_OMP_SPIN: int = 0
"""`resources.omp_spin_count` of the session `init_ray` started or joined."""


def worker_env_vars() -> dict[str, str]:
    """Environment passed to every Ray worker via `runtime_env`.

    Idle OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`): spinning makes processes that
    share 2 cores 10-80x slower (docs/cpu_stack.md, "Threads"); `resources.omp_spin_count`
    > 0 lets them spin that long first (`GOMP_SPINCOUNT`). Thread counts are set per actor.
    """
    env = {k: os.environ[k] for k in _PROPAGATED if k in os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _OMP_SPIN > 0:
        env.setdefault("GOMP_SPINCOUNT", str(_OMP_SPIN))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray Train also routes print() through its logger: a line would show twice.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


_SESSION_LOGS: Path | None = None
"""The logs dir of the embedded Ray session `init_ray` started, if any."""

_REAPER: subprocess.Popen | None = None
"""The embedded session's reaper (`ray_rlhf.distributed.reaper`), if `init_ray` started one."""


def init_ray(resources: ResourcesConfig, *, min_cpus: int = 0) -> bool:
    """Join the configured / job's cluster, or start an embedded one.

    Args:
        min_cpus: logical CPUs the embedded cluster needs at least (see
            `ResourcesConfig.num_cpus`); ignored when joining a cluster.

    Workers' stdout and stderr reach this process's console only when
    `ray_rlhf.logs.shows_infrastructure_logs()` (`--verbose`, or outside the CLI); they are
    always in the Ray session's log files, whose place the run's `driver.log` records.

    Returns:
        True when this call started Ray (the caller then owns `shutdown_ray(True)`).
    """
    global _SESSION_LOGS, _OMP_SPIN, _REAPER
    if ray.is_initialized():
        return False
    _OMP_SPIN = resources.omp_spin_count
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env_vars()},
        "logging_level": "WARNING",
        "log_to_driver": shows_infrastructure_logs(),
    }
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, **kwargs)
        where = f"joined the cluster at {address}"
    else:
        # Ray 2.60 turns token auth on for local clusters and would otherwise write a token
        # to ~/.ray; a per-process token keeps it in memory (inherited by the raylet).
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        temp_dir = os.environ.get("RAY_RLHF_RAY_TMP")
        context = ray.init(
            num_cpus=resources.num_cpus or max(os.cpu_count() or 1, min_cpus),
            include_dashboard=False,
            _temp_dir=temp_dir,
            **kwargs,
        )
        where = "started an embedded cluster"
        _REAPER = reaper.start()  # its agents outlive a SIGKILLed driver otherwise
    cpus = ray.cluster_resources().get("CPU", 0)
    logger.info("Ray: %s with %g CPUs", where, cpus)
    session_logs = Path(context.address_info["session_dir"]) / "logs"
    logger.debug("Ray session logs (every worker's stdout / stderr): %s", session_logs)
    # An embedded cluster's logs are copied into the run dir when it shuts down.
    _SESSION_LOGS = None if address else session_logs
    return True


def shutdown_ray(started: bool) -> None:
    """Shut Ray down if `init_ray` started it (never a cluster we merely joined).

    An embedded cluster's session logs (Ray Train workers, vLLM rollout actors, reward
    actors: their stdout and stderr) are then copied to the run's `logs/ray/`.
    """
    global _SESSION_LOGS, _OMP_SPIN
    if not started:
        return
    ray.shutdown()
    stand_down_reaper()
    _OMP_SPIN = 0
    log, source, _SESSION_LOGS = driver_log(), _SESSION_LOGS, None
    if log is None or source is None or not source.is_dir():
        return
    target = log.parent.parent / RAY_LOGS
    try:
        shutil.copytree(source, target, dirs_exist_ok=True, ignore_dangling_symlinks=True)
    except (OSError, shutil.Error) as err:  # partial copies are still useful
        logger.warning("could not copy all Ray session logs from %s: %s", source, err)
    logger.debug("Ray session logs copied to %s", target)


def stand_down_reaper() -> None:
    """After Ray was shut down cleanly: end the embedded session's reaper, killing nothing."""
    global _REAPER
    if _REAPER is not None:
        reaper.stop(_REAPER)
        _REAPER = None


CustomResourceMode = Literal["auto", "always", "never"]
LEARNER_RESOURCE = "learner"  # cluster.yaml: learner_gpu node type


def custom_resource(name: str, amount: float, mode: CustomResourceMode) -> dict[str, float]:
    """The custom-resource request of a pool actor / learner (`resources=` of Ray options).

    `always` requests it even when no node has it yet (an autoscaling cluster then starts a
    node type that declares it, see cluster.yaml); `auto` requests it only when the running
    cluster has it (embedded local clusters do not); `never` does not request it.
    """
    if mode == "never":
        return {}
    if mode == "auto" and ray.cluster_resources().get(name, 0) <= 0:
        return {}
    return {name: amount}
