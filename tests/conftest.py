"""Shared fixtures: project-local caches, one embedded Ray per session, /dev/shm hygiene."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RAY_RLHF_CACHE", ROOT / ".cache"))

# The same settings scripts/env.sh exports, for a bare `pytest` run.
_ENV = {
    "TMPDIR": str(CACHE / "tmp"),
    "RAY_RLHF_RAY_TMP": str(CACHE / "ray"),
    "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
    "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions"),
    "TRITON_CACHE_DIR": str(CACHE / "triton"),
    "HF_HOME": str(CACHE / "hf"),
    "MPLCONFIGDIR": str(CACHE / "matplotlib"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _key, _value in _ENV.items():
    os.environ.setdefault(_key, _value)
Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)
Path(os.environ["RAY_RLHF_RAY_TMP"]).mkdir(parents=True, exist_ok=True)

_SHM_PREFIXES = ("psm_", "deepspeed_allreduce_buffer", "deepspeed_shm")


def _shm_entries() -> set[str]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return set()
    return {p.name for p in shm.iterdir() if p.name.startswith(_SHM_PREFIXES)}


@pytest.fixture(scope="session", autouse=True)
def _clean_dev_shm():
    """Remove the /dev/shm segments that this test session's vLLM / DeepSpeed left behind."""
    before = _shm_entries()
    yield
    for name in _shm_entries() - before:
        try:
            (Path("/dev/shm") / name).unlink()
        except OSError:
            pass


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray cluster (6 logical CPUs on 2 cores, temp dir in the project)."""
    import ray

    from ray_rlhf.config import ResourcesConfig
    from ray_rlhf.distributed.runtime import init_ray, stand_down_reaper

    if ray.is_initialized():
        ray.shutdown()
    init_ray(ResourcesConfig(num_cpus=6))
    yield ray
    procs = psutil.Process().children(recursive=True)  # the cluster's daemons and workers
    ray.shutdown()
    stand_down_reaper()
    _end_stragglers(procs)


def _end_stragglers(procs: list, grace_s: float = 10.0) -> None:
    """Kill, by pid, the processes of the session's cluster still alive `grace_s` after its
    shutdown: a worker can hang in its exit (a Ray Train controller whose job was killed was
    seen to outlive the suite) and would hold its memory on the machine."""
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
