"""Chaos hooks for fault tests: keys in a run's `control.yaml` that pause a job at a known
point (so a test can SIGKILL it there) or make a learner process kill itself.

Every hook is inert unless its key is present; jobs read the file only at their hook points.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def control_value(control_path: Path, key: str) -> object:
    """`key` of the YAML mapping in `control_path`; None if absent or unreadable."""
    import yaml

    if not control_path.is_file():
        return None
    try:
        data = yaml.safe_load(control_path.read_text()) or {}
    except yaml.YAMLError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def pause_if_asked(control_path: Path, key: str, point: object, what: str) -> None:
    """If `control_path` has `key: point`, write `<control_path>.paused` and wait until the
    key changes (a test kills the job meanwhile, as a crash or preemption would).

    Args:
        control_path: the run's `control.yaml`.
        key: the hook's key, e.g. `pause_ppo_after_iterations`.
        point: where the job is now (a step count, a phase name).
        what: the job's name for the log line.
    """
    if control_value(control_path, key) != point:
        return
    control_path.with_name(control_path.name + ".paused").write_text(f"{point}\n")
    logger.info("%s: paused at %s=%s (%s)", what, key, point, control_path)
    while control_value(control_path, key) == point:
        time.sleep(0.2)


def kill_self_if_asked(control_path: Path, key: str, point: object) -> None:
    """If `control_path` has `key: point` and the hook has not fired yet, record that it
    fired (`<control_path>.<key>_fired`) and SIGKILL this process: no Python cleanup runs,
    as with an OOM kill or a lost node."""
    fired = control_path.with_name(f"{control_path.name}.{key}_fired")
    if fired.exists() or control_value(control_path, key) != point:
        return
    fired.write_text(f"{point} pid {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def kill_actors_if_asked(
    control_path: Path, key: str, point: int, *, busy_cpu_s: float = 0.0
) -> None:
    """If `control_path` has `key: {point: ActorClassName, ...}` and the entry for `point`
    has not fired yet, SIGKILL the processes of every live actor of that class on this node
    and wait until Ray has seen them die (restarting, dead, or alive in a new process), so
    the next call to them meets the fault. Records `<control_path>.<key>_<point>_fired`
    (the pids, then a `killed <pid> cpu_s <seconds>` line per kill).

    With `busy_cpu_s` > 0 (a task was just submitted to them), each process is killed once
    it has used that much CPU since this call (at most 10 s later): inside the task, so the
    caller meets a task that fails in flight.

    The actor table comes from the GCS (`ray._private.state`: the embedded cluster has no
    dashboard for the state API); single-machine fault tests only.
    """
    wanted = control_value(control_path, key)
    fired = control_path.with_name(f"{control_path.name}.{key}_{point}_fired")
    if not isinstance(wanted, dict) or point not in wanted or fired.exists():
        return
    pids = live_actor_pids(str(wanted[point]))
    fired.write_text(f"{wanted[point]} pids {pids}\n")
    for pid in pids:
        used = _wait_busy(pid, busy_cpu_s) if busy_cpu_s > 0 else 0.0
        os.kill(pid, signal.SIGKILL)
        with fired.open("a") as f:
            f.write(f"killed {pid} cpu_s {used:.3f}\n")
        logger.warning(
            "chaos: killed %s process %d %s iteration %d (%.2f s CPU into its task)",
            wanted[point], pid, "during" if busy_cpu_s > 0 else "before", point, used,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while set(pids) & set(live_actor_pids(str(wanted[point]))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos: Ray still lists {pids} as alive after 60 s")
        time.sleep(0.1)


def _wait_busy(pid: int, cpu_s: float, timeout_s: float = 10.0) -> float:
    """Wait until process `pid` has used `cpu_s` seconds of CPU since the call (or
    `timeout_s` passed); returns the CPU seconds it used."""
    import psutil

    proc = psutil.Process(pid)
    start = sum(proc.cpu_times()[:2])
    deadline = time.monotonic() + timeout_s
    used = 0.0
    while used < cpu_s and time.monotonic() < deadline:
        time.sleep(0.005)
        used = sum(proc.cpu_times()[:2]) - start
    return used


def live_actor_pids(class_name: str) -> list[int]:
    """Processes of this cluster's live actors of `class_name`, from the GCS actor table."""
    from ray._private import state

    return [
        int(a["Pid"])
        for a in state.actors().values()
        if a["ActorClassName"] == class_name and a["State"] == "ALIVE"
    ]
