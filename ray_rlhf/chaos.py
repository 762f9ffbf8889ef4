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
