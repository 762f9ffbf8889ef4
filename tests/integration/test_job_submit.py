"""`ray start --head` + `ray job submit` of a real job entry script, as a user would run it.

The test starts its own single-node cluster in a private temp dir (with token auth and the
dashboard on 127.0.0.1), submits `JOB` with the repo as the job's working_dir, waits for it,
and checks the run finished. It then stops exactly that cluster: `ray stop` would kill every
Ray process on the machine (other engineers' clusters, and the embedded cluster that the
other tests of this pytest session share), so teardown signals only the processes of this
cluster (see `_stop_cluster`).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RAY_RLHF_CACHE", ROOT / ".cache"))
VENV_BIN = Path(sys.executable).parent  # `ray` and `python` of the environment under test

# The submitted job: the entry script and its tiny-run overrides. The test appends
# `run.output_dir=<absolute tmp dir> run.name=job` and expects `<output_dir>/job/DONE.json`.
# A 1-iteration PPO job (a 4-step SFT first, since model.path is unset).
JOB = (
    "python jobs/train_ppo.py sft.steps=4 sft.log_every=2 sft.batch_size=8 sft.warmup_steps=1"
    " data.toyworld.n_sft=200 data.toyworld.n_train_prompts=32 data.toyworld.n_test_prompts=8"
    " learner.num_workers=1 rollout.kv_cache_mib=16 ppo.iterations=1"
    " ppo.prompts_per_iteration=4 ppo.minibatch_size=16 ppo.micro_batch_size=8"
)

# Unix socket paths under the temp dir must stay below 107 characters; the longest is
# `<temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store` (~64 after `<temp>`).
_SOCKET_SUFFIX_LEN = 70
_START_TIMEOUT_S = 120
_JOB_TIMEOUT_S = 600


@dataclass(frozen=True)
class Head:
    """A running single-node cluster started by this test."""

    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]
    session_id: int
    """Unix session of `ray start` (new session): every daemon and worker shares it."""


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports that are free right now (held open together, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _short_temp_dir() -> Path:
    """A fresh Ray temp dir inside the project cache, short enough for unix sockets."""
    parent = CACHE / "rj"
    if len(str(parent)) + 10 + _SOCKET_SUFFIX_LEN > 107:  # deep checkout: fall back
        parent = Path("/tmp") / f"rr-{os.getuid()}"
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / secrets.token_hex(3)
    path.mkdir()
    return path


def _cluster_env() -> dict[str, str]:
    """Environment of `ray start` and of the Ray CLI: token auth, this venv first on PATH.

    The job's entrypoint (`python ...`) runs with the raylet's environment, so the venv on
    PATH makes `python` the interpreter that has the project installed (as an activated
    venv would). The token is passed by value so nothing is read from or written to
    ~/.ray/auth_token.
    """
    env = dict(os.environ)
    for key in (
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_RUNTIME_ENV_IGNORE_GITIGNORE",
    ):
        env.pop(key, None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _cluster_processes(temp_dir: Path, session_id: int):
    """Processes of the cluster: its Unix session (daemons, raylet-spawned workers) plus
    anything whose command line or working directory is under its temp dir (job drivers,
    which Ray starts in a session of their own, run in the job's working_dir there)."""
    import psutil

    marker = str(temp_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if proc.pid == os.getpid():
            continue
        try:
            mine = (
                os.getsid(proc.pid) == session_id
                or any(marker in arg for arg in proc.info["cmdline"] or ())
                or (proc.info["cwd"] or "").startswith(marker)
            )
        except (OSError, psutil.Error):
            continue
        if mine:
            found.append(proc)
    return found


def _stop_cluster(head: Head, grace_s: float = 3.0) -> None:
    """SIGTERM this cluster's processes, SIGKILL what is left after `grace_s`."""
    import psutil

    procs = _cluster_processes(head.temp_dir, head.session_id)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = _short_temp_dir()
    gcs, dashboard, client, agent = _free_ports(4)
    env = _cluster_env()
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--num-cpus",
        "4",  # logical: 1 learner + 1 rollout + 1 reward actor + the Train controller's slack
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--include-dashboard=true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        # Fixed defaults (10001, 52365) would collide with any other local cluster.
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    start = time.perf_counter()
    # A new session: every process of this cluster (and only these) carries its id.
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    head = Head(f"http://127.0.0.1:{dashboard}", temp_dir, env, proc.pid)
    try:
        out, _ = proc.communicate(timeout=_START_TIMEOUT_S)
        assert proc.returncode == 0, f"ray start failed:\n{out[-4000:]}"
        print(f"\n[job-submit] ray start: {time.perf_counter() - start:.1f} s", flush=True)
        yield head
    finally:
        if proc.poll() is None:
            proc.kill()
        stop = time.perf_counter()
        _stop_cluster(head)
        print(f"[job-submit] stop: {time.perf_counter() - stop:.1f} s", flush=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_cli(head: Head, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args],
        env=head.env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )


def _job_info(head: Head, submission_id: str, *, token: str | None = None) -> dict:
    """GET /api/jobs/<id> from the dashboard's REST API with the cluster's bearer token."""
    token = head.env["RAY_AUTH_TOKEN"] if token is None else token
    request = urllib.request.Request(
        f"{head.dashboard_url}/api/jobs/{submission_id}",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


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
        result = _ray_cli(
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
        _ray_cli(
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
