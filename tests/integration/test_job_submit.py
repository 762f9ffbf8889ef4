"""`ray start --head` + `ray job submit` of a real job entry script, as a user would run it.

The test starts its own single-node cluster (`ray_head.start_head`: a private temp dir,
token auth, the dashboard on 127.0.0.1), submits `JOB` with the repo as the job's
working_dir, waits for it, and checks the run finished; then it stops exactly that cluster.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
from ray_head import ROOT, Head, dashboard_get, ray_cli, start_head

pytestmark = pytest.mark.integration

# The submitted job: the entry script and its tiny-run overrides. The test appends
# `run.output_dir=<absolute tmp dir> run.name=job` and expects `<output_dir>/job/DONE.json`.
# A 1-iteration PPO job (a 4-step SFT first, since model.path is unset).
JOB = (
    "python jobs/train_ppo.py sft.steps=4 sft.log_every=2 sft.batch_size=8 sft.warmup_steps=1"
    " data.toyworld.n_sft=200 data.toyworld.n_train_prompts=32 data.toyworld.n_test_prompts=8"
    " learner.num_workers=1 rollout.kv_cache_mib=16 ppo.iterations=1"
    " ppo.prompts_per_iteration=4 ppo.minibatch_size=16 ppo.micro_batch_size=8"
)

_JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def ray_head():
    with start_head("job-submit") as head:
        yield head


def _job_info(head: Head, submission_id: str, *, token: str | None = None) -> dict:
    """The job's record from the dashboard's REST API."""
    return dashboard_get(head, f"/api/jobs/{submission_id}", token=token)


def test_dashboard_refuses_requests_without_the_token(ray_head):
    for token in ("", secrets.token_hex(32)):
        with pytest.raises(urllib.error.HTTPError) as info:
            _job_info(ray_head, "no-such-job", token=token)
        assert info.value.code in (401, 403), info.value


def test_submitted_job_succeeds_and_finishes_its_run(ray_head, tmp_path):
    output_dir = tmp_path.resolve()  # absolute: the job runs in its own working dir
    submission_id = f"rr-test-{secrets.token_hex(4)}"
    # Job-level env vars must not repeat a key that the driver's ray.init runtime_env also
    # sets (ray_rlhf.distributed.runtime._PROPAGATED): Ray refuses to merge conflicts.
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    entrypoint = [*shlex.split(JOB), f"run.output_dir={output_dir}", "run.name=job"]
    start = time.perf_counter()
    try:
        result = ray_cli(
            ray_head,
            "job",
            "submit",
            "--address",
            ray_head.dashboard_url,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *entrypoint,
            timeout=_JOB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        ray_cli(
            ray_head, "job", "stop", "--address", ray_head.dashboard_url, submission_id, timeout=60
        )
        raise
    seconds = time.perf_counter() - start
    print(f"[job-submit] submit + run: {seconds:.1f} s", flush=True)
    log = result.stdout[-6000:]
    assert result.returncode == 0, f"`ray job submit` exited {result.returncode}:\n{log}"

    assert _job_info(ray_head, submission_id)["status"] == "SUCCEEDED", log
    assert (output_dir / "job" / "DONE.json").is_file(), log
    _assert_upload_is_small(ray_head.temp_dir)


def _assert_upload_is_small(temp_dir: Path) -> None:
    """The working_dir package the cluster unpacked holds the code, not .venv/.cache/runs."""
    packages = [
        p for p in temp_dir.glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()
    ]
    assert packages, "no working_dir package was unpacked on the cluster"
    for pkg in packages:
        top = {p.name for p in pkg.iterdir()}
        assert {"ray_rlhf", "jobs"} <= top, top
        assert not top & {".venv", ".cache", "runs", ".git"}, top
        size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
        assert size < 20 * 2**20, f"{pkg}: {size / 2**20:.1f} MiB"
