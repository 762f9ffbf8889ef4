"""The workers' OpenMP spin before sleeping (`resources.omp_spin_count`, `GOMP_SPINCOUNT`)."""

from __future__ import annotations

import pytest

from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.distributed import runtime


def test_worker_env_carries_the_configured_spin_unless_exported(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(runtime, "_OMP_SPIN", 0)  # the default: sleep at once
    env = runtime.worker_env_vars()
    assert "GOMP_SPINCOUNT" not in env and env["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    monkeypatch.setattr(runtime, "_OMP_SPIN", 1_000_000)
    assert runtime.worker_env_vars()["GOMP_SPINCOUNT"] == "1000000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "42")  # the user's export wins
    assert runtime.worker_env_vars()["GOMP_SPINCOUNT"] == "42"


def test_a_negative_spin_count_is_rejected_with_its_key():
    assert load_config(None, ["resources.omp_spin_count=1000000"]).resources.omp_spin_count == 1e6
    with pytest.raises(ConfigError, match="omp_spin_count"):
        load_config(None, ["resources.omp_spin_count=-1"])
