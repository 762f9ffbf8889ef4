"""Where the driver's logs go: the console for people, `runs/<name>/logs/driver.log` for the
record, and user errors as one paragraph.

The `ray_rlhf` loggers write INFO to stdout and warnings to stderr when the CLI calls
`log_to_console`. `prepare_run_dir` calls `attach_driver_log`, so everything they log from
then on is also in the run's `logs/driver.log`. `report_user_error` prints a `UserError` as
one paragraph on stderr and writes its traceback to that file, or to a file under the
project's `.cache/errors/` when no run dir is known yet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

from ray_rlhf.errors import UserError

DRIVER_LOG = Path("logs") / "driver.log"
"""The driver's log file, relative to the run dir."""

_LOGGER = logging.getLogger("ray_rlhf")
_CONSOLE_FORMAT = "[ray-rlhf] %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DriverLog(logging.FileHandler):
    """The run's `logs/driver.log` (one per process: a new run dir replaces it)."""


class _Console(logging.StreamHandler):
    """stdout (below WARNING) or stderr (WARNING and above)."""


def log_to_console() -> None:
    """INFO of the `ray_rlhf` loggers to stdout, WARNING and above to stderr (idempotent)."""
    if any(isinstance(h, _Console) for h in _LOGGER.handlers):
        return
    out = _Console(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = _Console(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
        _LOGGER.addHandler(handler)
    _LOGGER.setLevel(logging.INFO)


def attach_driver_log(run_dir: Path) -> Path:
    """Sends the `ray_rlhf` loggers' records to `run_dir/logs/driver.log` (appending).

    Returns:
        The log file.
    """
    path = run_dir / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    for handler in [h for h in _LOGGER.handlers if isinstance(h, _DriverLog)]:
        _LOGGER.removeHandler(handler)
        handler.close()
    handler = _DriverLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    _LOGGER.addHandler(handler)
    if _LOGGER.level == logging.NOTSET:
        _LOGGER.setLevel(logging.INFO)
    return path


def driver_log() -> Path | None:
    """The run's log file if `attach_driver_log` was called in this process, else None."""
    for handler in _LOGGER.handlers:
        if isinstance(handler, _DriverLog):
            return Path(handler.baseFilename)
    return None


def _fallback_log(prog: str) -> Path:
    """A fresh file under the project's `.cache/errors/` (`RAY_RLHF_CACHE`, else ./.cache)."""
    cache = Path(os.environ.get("RAY_RLHF_CACHE", ".cache"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = cache / "errors" / f"{prog.replace(' ', '-')}-{stamp}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def report_user_error(error: UserError, prog: str) -> int:
    """Prints `error` as one paragraph on stderr; writes its traceback to the run's log.

    The paragraph is `<prog>: <kind>: <message>`, then the hint (how to fix it), then where
    the traceback is. `error.details` (e.g. a Ray Train worker's traceback) go to the log too.

    Returns:
        2, the exit code of a user error.
    """
    log = driver_log() or _fallback_log(prog)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} user error ({error.kind}):\n")
        f.write("".join(traceback.format_exception(error)))
        if error.details:
            f.write(f"{error.details}\n")
    lines = [f"{prog}: {error.kind}: {error}"]
    if error.hint:
        lines.append(error.hint)
    lines.append(f"Full traceback: {log}")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 2
