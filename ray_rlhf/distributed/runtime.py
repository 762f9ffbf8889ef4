"""Starting or joining Ray, and the environment every actor / Ray Train worker gets."""

from __future__ import annotations

import os
import secrets
from typing import Any, Literal

import ray

from ray_rlhf.config import ResourcesConfig

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
    "TOKENIZERS_PARALLELISM",
    "PYTHONDONTWRITEBYTECODE",
)


def worker_env_vars() -> dict[str, str]:
    """Environment passed to every Ray worker via `runtime_env`.

    OpenMP spin-waiting makes processes that share 2 cores 10-80x slower (docs/cpu_stack.md,
    "Threads"), so the wait policy defaults to PASSIVE; thread counts are set per actor.
    """
    env = {k: os.environ[k] for k in _PROPAGATED if k in os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray Train also routes print() through its logger: progress lines would show twice.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


def init_ray(resources: ResourcesConfig, *, min_cpus: int = 0) -> bool:
    """Join the configured / job's cluster, or start an embedded one.

    Args:
        min_cpus: logical CPUs the embedded cluster needs at least (see
            `ResourcesConfig.num_cpus`); ignored when joining a cluster.

    Returns:
        True when this call started Ray (the caller then owns `ray.shutdown()`).
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env_vars()},
        "logging_level": "WARNING",
        "log_to_driver": True,
    }
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray 2.60 turns token auth on for local clusters and would otherwise write a token
        # to ~/.ray; a per-process token keeps it in memory (inherited by the raylet).
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        temp_dir = os.environ.get("RAY_RLHF_RAY_TMP")
        ray.init(
            num_cpus=resources.num_cpus or max(os.cpu_count() or 1, min_cpus),
            include_dashboard=False,
            _temp_dir=temp_dir,
            **kwargs,
        )
    return True


def shutdown_ray(started: bool) -> None:
    """Shut Ray down if `init_ray` started it (never a cluster we merely joined)."""
    if started:
        ray.shutdown()


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
