"""The workers' OpenMP spin default (`ResourcesConfig.omp_spin_count`, `GOMP_SPINCOUNT`)."""

from __future__ import annotations

import pytest

from ray_rlhf.config import ResourcesConfig
from ray_rlhf.distributed import runtime


@pytest.mark.parametrize(
    ("configured", "overlap", "expected"),
    [(None, False, 1_000_000), (None, True, 0), (5, False, 5), (5, True, 5), (0, False, 0)],
)
def test_spin_count_defaults_by_whether_roles_overlap(configured, overlap, expected):
    resources = ResourcesConfig(omp_spin_count=configured)
    assert runtime.omp_spin_count(resources, roles_overlap=overlap) == expected


def test_worker_env_carries_the_chosen_spin_unless_exported(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(runtime, "_OMP_SPIN", None)
    env = runtime.worker_env_vars()
    assert "GOMP_SPINCOUNT" not in env and env["OMP_WAIT_POLICY"] in ("PASSIVE", "passive")
    monkeypatch.setattr(runtime, "_OMP_SPIN", 1_000_000)
    assert runtime.worker_env_vars()["GOMP_SPINCOUNT"] == "1000000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "42")  # the user's export wins
    assert runtime.worker_env_vars()["GOMP_SPINCOUNT"] == "42"
