"""The embedded cluster's reaper: when the driver dies without shutting Ray down (SIGKILL,
the kernel's OOM killer), it kills the processes the driver's embedded Ray started.

Ray ties its head processes (GCS, raylet) to the driver with the kernel's parent-death
signal, but the raylet's children, the dashboard agent and the runtime-env agent, only exit
after trying to report the raylet's death to the dead GCS, which takes a minute or more.
The reaper is a small process of its own that follows the driver: every `interval_s` it
records the driver's descendants (pid and start time); once the driver is gone it SIGKILLs
the recorded processes that are still alive. A clean shutdown (`stop`) tells it to exit
without killing anything.

Run as `python -m ray_rlhf.distributed.reaper <driver pid> <interval_s>`; the driver holds
its stdin: a `done` line stands it down, end of file (the driver died) sets it off.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

import psutil

_STAND_DOWN = b"done\n"


def start(interval_s: float = 2.0) -> subprocess.Popen:
    """Start a reaper for this process; keep the handle for `stop`."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(psutil.Process().pid), str(interval_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(reaper: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stand the reaper down after a clean shutdown: it exits and kills nothing."""
    assert reaper.stdin is not None  # started with a pipe
    with contextlib.suppress(BrokenPipeError, OSError):
        reaper.stdin.write(_STAND_DOWN)
        reaper.stdin.close()
    try:
        reaper.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _descendants(driver: psutil.Process, own_pid: int) -> dict[int, float]:
    """pid -> start time of every live descendant of `driver` but the reaper itself."""
    found = {}
    with contextlib.suppress(psutil.Error):
        for proc in driver.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.pid != own_pid:
                    found[proc.pid] = proc.create_time()
    return found


def _kill(recorded: dict[int, float]) -> int:
    """SIGKILL the recorded processes still alive (same pid and start time); how many."""
    killed = 0
    for pid, started in recorded.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.kill()
                killed += 1
    return killed


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(driver_pid: int, interval_s: float) -> int:
    """The reaper's loop (see the module docstring); returns the number of processes killed."""
    stood_down, ended = threading.Event(), threading.Event()

    def read_stdin() -> None:
        if sys.stdin.buffer.readline() == _STAND_DOWN:
            stood_down.set()
        ended.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    own_pid = psutil.Process().pid
    recorded: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    while _alive(driver):
        recorded.update(_descendants(driver, own_pid))
        if ended.wait(interval_s):
            break
    if stood_down.is_set():
        return 0
    return _kill(recorded)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver, which stops us
    watch(int(sys.argv[1]), float(sys.argv[2]))
