"""A private `ray start --head` cluster for tests that need a real cluster of their own
(`ray job submit`, the autoscaler), and its exact teardown.

Each cluster lives in a fresh temp dir inside the project cache, with token auth and the
dashboard on 127.0.0.1 at free ports. `ray stop` would kill every Ray process on the machine
(other engineers' clusters, and the embedded cluster the other tests of a pytest session
share), so teardown signals only this cluster's processes: its Unix session (`ray start`
runs in a new one; the daemons, the autoscaler's fake nodes and raylet-spawned workers share
it) and anything whose command line or working dir is under its temp dir (job drivers).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RAY_RLHF_CACHE", ROOT / ".cache"))
VENV_BIN = Path(sys.executable).parent  # `ray` and `python` of the environment under test

# Unix socket paths under the temp dir must stay below 107 characters; the longest is
# `<temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store` (~64 after `<temp>`).
_SOCKET_SUFFIX_LEN = 70
_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Head:
    """A running cluster started by `start_head`."""

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    env: dict[str, str]
    session_id: int
    """Unix session of `ray start` (new session): every daemon and worker shares it."""


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that are free right now (held open together, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def short_temp_dir() -> Path:
    """A fresh Ray temp dir inside the project cache, short enough for unix sockets."""
    parent = CACHE / "rj"
    if len(str(parent)) + 10 + _SOCKET_SUFFIX_LEN > 107:  # deep checkout: fall back
        parent = Path("/tmp") / f"rr-{os.getuid()}"
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / secrets.token_hex(3)
    path.mkdir()
    return path


def cluster_env() -> dict[str, str]:
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


def cluster_processes(temp_dir: Path, session_id: int):
    """The cluster's live processes (psutil.Process): its Unix session plus anything whose
    command line or working directory is under its temp dir."""
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


def stop_cluster(head: Head, grace_s: float = 3.0) -> None:
    """SIGTERM this cluster's processes, SIGKILL what is left after `grace_s`."""
    import psutil

    procs = cluster_processes(head.temp_dir, head.session_id)
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


@contextmanager
def start_head(
    label: str,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    gcs_port: int | None = None,
) -> Iterator[Head]:
    """`ray start --head` (4 logical CPUs unless `extra_args` says otherwise) in a new
    session; yields the running cluster and stops exactly its processes afterwards.

    Args:
        label: prefix of the timing lines printed to the test log.
        extra_args: more `ray start` flags, e.g. `--autoscaling-config=<file>`.
        extra_env: more environment variables for `ray start` (and so for its daemons).
        gcs_port: the GCS port (a free one when None), for configs that must name it.
    """
    temp_dir = short_temp_dir()
    dashboard, client, agent, free_gcs = free_ports(4)
    gcs = gcs_port or free_gcs
    env = cluster_env() | (extra_env or {})
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        *(() if any(a.startswith("--num-cpus") for a in extra_args) else ("--num-cpus", "4")),
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
        *extra_args,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    head = Head(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", temp_dir, env, proc.pid)
    try:
        out, _ = proc.communicate(timeout=_START_TIMEOUT_S)
        assert proc.returncode == 0, f"ray start failed:\n{out[-4000:]}"
        print(f"\n[{label}] ray start: {time.perf_counter() - start:.1f} s", flush=True)
        yield head
    finally:
        if proc.poll() is None:
            proc.kill()
        stop = time.perf_counter()
        stop_cluster(head)
        print(f"[{label}] stop: {time.perf_counter() - stop:.1f} s", flush=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(head: Head, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """The `ray` CLI of this venv against `head` (stdout and stderr together)."""
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args],
        env=head.env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )


def dashboard_get(head: Head, path: str, *, token: str | None = None) -> dict:
    """GET `path` (e.g. `/api/jobs/<id>`) from the dashboard's REST API with the cluster's
    bearer token (or `token`; "" sends none)."""
    token = head.env["RAY_AUTH_TOKEN"] if token is None else token
    request = urllib.request.Request(
        f"{head.dashboard_url}{path}",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
