"""The embedded cluster's reaper with real processes: a stand-in driver starts a reaper and
a child in a session of its own (as the raylet's agents outlive the raylet); the driver is
SIGKILLed, or shuts down cleanly, and the child is killed, or left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

_DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from ray_rlhf.distributed import reaper

    handle = reaper.start(interval_s=0.1)
    child = subprocess.Popen(["sleep", "120"], start_new_session=True)
    time.sleep(1.0)  # the reaper has recorded the child by now
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(str(child.pid))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    if sys.argv[2] == "clean":
        reaper.stop(handle)
        sys.exit(0)
    time.sleep(120)
    """
)


def _start_driver(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int]:
    pid_file = tmp_path / "child.pid"
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(pid_file), mode])
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert driver.poll() is None or mode == "clean", "the stand-in driver exited"
        assert time.monotonic() < deadline, "the stand-in driver never started its child"
        time.sleep(0.05)
    return driver, int(pid_file.read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def children():
    pids: list[int] = []
    yield pids
    for pid in pids:  # whatever a failed test left
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_sigkilled_driver_takes_its_recorded_processes_with_it(tmp_path, children):
    driver, child = _start_driver(tmp_path, "kill")
    children += [driver.pid, child]
    assert psutil.Process(child).is_running()
    driver.kill()
    driver.wait()
    assert _gone_within(child, 5.0)


def test_a_clean_shutdown_kills_nothing(tmp_path, children):
    driver, child = _start_driver(tmp_path, "clean")
    children.append(child)
    assert driver.wait(timeout=30) == 0
    time.sleep(0.5)  # a reaper that was not stood down would have killed it by now
    assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
