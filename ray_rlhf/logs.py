"""Where the driver's output goes: people read the console, machines read the run's logs.

The CLI runs a command inside `console_session`. Without `--verbose`, once the run dir
exists (`attach_driver_log`) the process's stdout and stderr file descriptors are
redirected into `runs/<name>/logs/driver.log`: whatever Ray, vLLM, DeepSpeed, transformers
or their C++ cores print in the driver lands there, not on the terminal (Python logging
levels cannot reach C++ prints or third-party handlers bound to stdout). Ray workers keep
their output in the Ray session's log files (`shows_infrastructure_logs` is False, so
`init_ray` sets `log_to_driver=False`). The console keeps what people read: the `ray_rlhf`
loggers' INFO lines, the progress bars (`ray_rlhf.progress`), result tables
(`console_print`) and errors as one paragraph. With `--verbose` nothing is redirected and
the workers' output reaches the console as before.

Every `ray_rlhf` record (DEBUG and up) also goes to `driver.log`; `report_user_error`
prints a `UserError` as one paragraph on the console's stderr and writes its traceback to
that file, or to a file under the project's `.cache/errors/` when no run dir is known yet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ray_rlhf.errors import UserError

DRIVER_LOG = Path("logs") / "driver.log"
"""The driver's log file, relative to the run dir."""
RAY_LOGS = Path("logs") / "ray"
"""The Ray session's logs (every worker's stdout / stderr), copied into the run dir when an
embedded cluster shuts down (`ray_rlhf.distributed.runtime.shutdown_ray`)."""

_LOGGER = logging.getLogger("ray_rlhf")
_CONSOLE_FORMAT = "[ray-rlhf] %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _Session:
    """The console of a CLI command.

    Attributes:
        verbose: Infrastructure logs stay on the console (`--verbose`).
        out: The terminal's stdout (a duplicate of fd 1 taken before any redirect), or
            None when stdout is not fd 1 (e.g. under pytest's capture): then `sys.stdout`.
        err: The same for stderr.
    """

    verbose: bool
    out: TextIO | None = None
    err: TextIO | None = None

    @property
    def captures(self) -> bool:
        """Whether the driver's fds 1 and 2 go to the run's log once it exists."""
        return not self.verbose and self.out is not None


_SESSION: _Session | None = None


def console_out() -> TextIO:
    """The stream people read (stdout of the terminal, also while fd 1 goes to the log)."""
    return _SESSION.out if _SESSION is not None and _SESSION.out is not None else sys.stdout


def console_err() -> TextIO:
    """The terminal's stderr (see `console_out`)."""
    return _SESSION.err if _SESSION is not None and _SESSION.err is not None else sys.stderr


def console_print(text: str) -> None:
    """Prints `text` for people (a result table, where the outputs are)."""
    tqdm.write(text, file=console_out())
    console_out().flush()


def console_active() -> bool:
    """Whether a CLI console session is open (progress bars are drawn only then)."""
    return _SESSION is not None


def shows_infrastructure_logs() -> bool:
    """Whether Ray workers' output should reach this process's console (`log_to_driver`):
    with `--verbose`, or outside a CLI session (library use, tests, experiments)."""
    return _SESSION is None or _SESSION.verbose


class _ConsoleHandler(logging.Handler):
    """`ray_rlhf` records on the console: below WARNING to stdout, the rest to stderr,
    written above any progress bar (`tqdm.write`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = console_err() if record.levelno >= logging.WARNING else console_out()
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # a log record must never raise (logging.Handler.handleError)
            self.handleError(record)


def _terminal_streams() -> tuple[TextIO, TextIO] | None:
    """Text streams on duplicates of fds 1 and 2, or None if sys.stdout / sys.stderr are
    not those fds (then nothing can be redirected below them)."""
    try:
        if sys.stdout.fileno() != 1 or sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding=encoding, errors="replace")
    err = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="replace")
    return out, err


@contextmanager
def console_session(*, verbose: bool = False) -> Iterator[None]:
    """The console of one CLI command; restores fds 1 and 2 and the handlers on exit.

    Args:
        verbose: Keep Ray, vLLM, DeepSpeed and transformers output on the console.
    """
    global _SESSION
    handler = _ConsoleHandler(level=logging.INFO)
    handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(logging.DEBUG)
    streams = None if verbose else _terminal_streams()
    _SESSION = _Session(verbose, *(streams or (None, None)))
    try:
        yield
    finally:
        if streams is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, stream in zip((1, 2), streams, strict=True):
                os.dup2(stream.fileno(), fd)
                stream.close()
        _LOGGER.removeHandler(handler)
        _SESSION = None


class _DriverLog(logging.FileHandler):
    """The run's `logs/driver.log` (one per process: a new run dir replaces it)."""


def attach_driver_log(run_dir: Path) -> Path:
    """Sends the `ray_rlhf` loggers' records to `run_dir/logs/driver.log` (appending), and
    in a console session without `--verbose` the process's stdout and stderr too.

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
    _LOGGER.setLevel(logging.DEBUG)
    if _SESSION is not None and _SESSION.captures:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        _LOGGER.info(
            "run dir %s; Ray, vLLM, DeepSpeed and transformers logs go to %s/ (--verbose "
            "shows them here)",
            run_dir,
            path.parent,
        )
    return path


def log_to_stdout() -> None:
    """In a Ray worker: the `ray_rlhf` loggers' INFO lines to its stdout (the Ray session's
    worker log file, or the console with `--verbose`); idempotent."""
    if any(isinstance(h, _WorkerStdout) for h in _LOGGER.handlers):
        return
    handler = _WorkerStdout(sys.stdout)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(logging.INFO)


class _WorkerStdout(logging.StreamHandler):
    """A worker's stdout (see `log_to_stdout`)."""


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


def _write_traceback(error: BaseException, label: str, details: str, prog: str) -> Path:
    log = driver_log() or _fallback_log(prog)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {label}:\n")
        f.write("".join(traceback.format_exception(error)))
        if details:
            f.write(f"{details}\n")
    return log


def report_user_error(error: UserError, prog: str) -> int:
    """Prints `error` as one paragraph on stderr; writes its traceback to the run's log.

    The paragraph is `<prog>: <kind>: <message>`, then the hint (how to fix it), then where
    the traceback is. `error.details` (e.g. a Ray Train worker's traceback) go to the log too.

    Returns:
        2, the exit code of a user error.
    """
    log = _write_traceback(error, f"user error ({error.kind})", error.details, prog)
    lines = [f"{prog}: {error.kind}: {error}"]
    if error.hint:
        lines.append(error.hint)
    lines.append(f"Full traceback: {log}")
    print("\n".join(lines), file=console_err(), flush=True)
    return 2


def report_failure(error: BaseException, prog: str) -> int:
    """Any other error while the driver's output goes to the log: what failed, in one line,
    and where the traceback and the Ray workers' logs are (never a silent failure).

    Returns:
        1 (130 for an interrupt).
    """
    interrupted = isinstance(error, KeyboardInterrupt)
    log = _write_traceback(error, "interrupted" if interrupted else "failed", "", prog)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    what = "interrupted" if interrupted else f"failed: {type(error).__name__}: {first}"
    lines = [f"{prog}: {what}", f"Full traceback: {log}"]
    workers = log.parent.parent / RAY_LOGS
    if workers.is_dir():
        lines.append(f"Ray worker logs (vLLM, DeepSpeed, Ray Train): {workers}/")
    print("\n".join(lines), file=console_err(), flush=True)
    return 130 if interrupted else 1


def captures_output() -> bool:
    """Whether this process's stdout / stderr go to a run's log (see `console_session`)."""
    return _SESSION is not None and _SESSION.captures and driver_log() is not None
