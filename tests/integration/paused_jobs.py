"""Kill a job at a known point: start a job script in its own process group with a
`control.yaml` chaos hook that pauses it (the job writes `control.yaml.paused` and waits),
then SIGKILL the whole group, as a crash or a preemption would, or the driver process alone,
as the kernel's OOM killer would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_when_paused(
    script: str,
    hook: str,
    args: list[str],
    run_dir: Path,
    log: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
    *,
    group: bool = True,
) -> int:
    """Runs `script` (e.g. `jobs/meta_rm.py`) with `args`; `hook` is the control.yaml line
    that makes it pause (e.g. `pause_meta_after_steps: 1`); `env` replaces the environment.
    Once it paused, SIGKILLs its process group (`group`) or only the driver process, and
    removes the control file.

    Returns:
        The driver's pid, which is also the id of the job's process group.

    Raises:
        AssertionError: the job exited, or did not pause within `timeout_s` (with the log's
            tail).
    """
    run_dir.mkdir(parents=True)
    (run_dir / "control.yaml").write_text(f"{hook}\n")
    paused = run_dir / "control.yaml.paused"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, script, *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    paused_in_time = False
    try:
        deadline = time.monotonic() + timeout_s
        while not paused.exists():
            assert proc.poll() is None, f"job exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no pause:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        paused_in_time = True
    finally:
        if group or not paused_in_time:  # a failed wait leaves nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()
    (run_dir / "control.yaml").unlink()
    return proc.pid
