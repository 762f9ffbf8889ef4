"""A Ray worker of an embedded cluster started by `init_ray` gets the driver's OpenMP wait
settings through the job's runtime env."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def test_a_plain_task_sees_the_openmp_wait_settings(ray_session):
    @ray_session.remote(num_cpus=0)
    def read_env() -> tuple[str | None, str | None]:
        return os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")

    policy, spin = ray_session.get(read_env.remote())
    # The suite's session uses the default spin count 0: GOMP_SPINCOUNT only if exported.
    assert policy.upper() == "PASSIVE" and spin == os.environ.get("GOMP_SPINCOUNT")
