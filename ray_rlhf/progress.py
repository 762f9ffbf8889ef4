"""Progress bars on the driver's console, one per stage.

Rank 0 of a Ray Train stage appends a row per logged step to the stage's `metrics.jsonl`
(`ray_rlhf.metrics.MetricsWriter`). While the stage runs, `follow_metrics` tails that file
from the driver and moves one tqdm bar: steps done, elapsed < remaining (the ETA), and a
short postfix of the newest row's metrics. The metrics file is the only channel, so the
workers print nothing for people and their output can stay in the Ray session's logs
(`ray_rlhf.logs`); on shared storage this works for `ray job submit` drivers too. Loops
that run in the driver (evaluation, meta-rm) move a `StageBar` themselves. Bars are drawn
only in a CLI console session (`ray_rlhf.logs.console_active`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ray_rlhf.logs import console_active, console_out, console_print

Row = Mapping[str, Any]
"""One metrics row: `step` plus namespaced metrics (`train/loss`)."""

POLL_S = 0.5
"""How often the driver reads new rows (and redraws the elapsed time)."""


NOTICE_KEY = "events/notice"
"""A metrics row's text for people (an operational event); the driver prints it once."""

_RECOVERIES = {
    "faults/learner_restarts": "a learner worker died; Ray Train restarted the learners from "
    "the last checkpoint and this iteration was trained again",
    "faults/rollout_restarts": "a rollout actor died; Ray restarted it and it was caught up "
    "to the learner's weights",
    "faults/rollout_replacements": "a rollout actor was out of restarts; the pool replaced it "
    "with a new one",
    "faults/reward_restarts": "a reward actor died; Ray restarted it and its scoring was repeated",
    "faults/reward_replacements": "a reward actor was out of restarts; the pool replaced it "
    "with a new one",
}
"""Fault counters of a PPO row (running totals) and what an increase means, for people."""


def recovery_notes(seen: dict[str, int], row: Row) -> list[str]:
    """One line per fault counter of `row` above its highest value in `seen` (a missing
    counter is 0): what happened, and the run's total so far. Updates `seen`, so rows read
    again (a resumed stage rewrites its file) repeat nothing."""
    notes = []
    for key, text in _RECOVERIES.items():
        total = int(row.get(key, 0))
        if total > seen.get(key, 0):
            seen[key] = total
            notes.append(f"{text} ({key.removeprefix('faults/')}: {total} so far)")
    return notes


@dataclass(frozen=True)
class StageProgress:
    """How one stage shows its progress.

    Attributes:
        name: Bar label, e.g. "sft".
        total: Steps (or iterations) of the stage.
        unit: "step", "iter", ...
        postfix: The newest row as a short text (`metrics_postfix`).
        stride: Steps between two rows (the stage's log interval): a rerun that resumes
            shows its first row's step minus this as already done.
    """

    name: str
    total: int
    unit: str
    postfix: Callable[[Row], str]
    stride: int = 1


def metrics_postfix(row: Row, fields: Sequence[tuple[str, str, str]]) -> str:
    """`label value` for each (label, key, format) whose key the row has, space-joined.

    Example: `metrics_postfix(row, [("loss", "train/loss", ".3f")])` -> `"loss 1.235"`.
    """
    return " ".join(f"{label} {row[key]:{spec}}" for label, key, spec in fields if key in row)


_LABEL_PREFIX: ContextVar[str] = ContextVar("stage_label_prefix", default="")


@contextmanager
def stage_label_prefix(prefix: str) -> Iterator[None]:
    """Bars opened inside the block are labeled `<prefix> <stage>` (e.g. `round 2 rm`)."""
    token = _LABEL_PREFIX.set(prefix)
    try:
        yield
    finally:
        _LABEL_PREFIX.reset(token)


def stage_label(name: str) -> str:
    """A stage's bar label: its name, after the current `stage_label_prefix`."""
    prefix = _LABEL_PREFIX.get()
    return f"{prefix} {name}" if prefix else name


class StageBar:
    """A tqdm bar for one stage on the console; does nothing outside a console session."""

    def __init__(self, spec: StageProgress) -> None:
        self.spec = spec
        self._started = False
        stream = console_out()
        tty = stream.isatty()
        self._bar = tqdm(
            total=spec.total,
            desc=stage_label(spec.name),
            unit=spec.unit,
            file=stream,
            dynamic_ncols=tty,
            # A pipe or a log file gets a redraw per 30 s, not per update.
            mininterval=0.5 if tty else 30.0,
            disable=not console_active(),
        )
        self._tty = tty

    def show(self, step: int, row: Row) -> None:
        """Moves the bar to `step` and shows `row` in the postfix."""
        bar = self._bar
        if not self._started:
            # A resumed stage: count the steps before this session as done, not as speed.
            start = max(0, min(step - self.spec.stride, self.spec.total))
            bar.n = bar.last_print_n = bar.initial = start
            self._started = True
        bar.set_postfix_str(self.spec.postfix(row), refresh=False)
        if step >= bar.n:
            bar.update(step - bar.n)
        else:  # a restarted worker group replays the steps after its checkpoint
            bar.n = bar.last_print_n = step
            bar.refresh()

    def tick(self) -> None:
        """Redraws the elapsed time (terminals only)."""
        if self._tty:
            self._bar.refresh()

    def close(self) -> None:
        """Leaves the final state on its own line."""
        self._bar.close()

    def __enter__(self) -> StageBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsTail:
    """New complete rows of a `metrics.jsonl` since this object was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        stat = path.stat() if path.is_file() else None
        self._offset = stat.st_size if stat else 0
        self._inode = stat.st_ino if stat else None
        self._partial = b""

    def new_rows(self) -> list[dict[str, Any]]:
        """The rows appended since the last call (a half-written last line waits). When a
        resumed stage rewrote the file (`MetricsWriter(resume_step=...)`), it is read again
        from the start."""
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            if inode != self._inode:
                self._inode, self._offset, self._partial = inode, 0, b""
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


@contextmanager
def follow_metrics(spec: StageProgress | None, metrics_dir: Path) -> Iterator[None]:
    """Draws the stage's bar from the rows its rank 0 appends to `metrics_dir/metrics.jsonl`
    while the block runs (a thread of the driver polls every `POLL_S`)."""
    if spec is None or not console_active():
        yield
        return
    tail = MetricsTail(metrics_dir / "metrics.jsonl")
    stop = threading.Event()
    seen: dict[str, int] = {}

    def show_new_rows() -> None:
        for row in tail.new_rows():
            notes = recovery_notes(seen, row)
            if NOTICE_KEY in row:  # e.g. a resize that was not placed
                notes.append(row[NOTICE_KEY])
            for note in notes:  # one line above the bar each
                console_print(f"{spec.name} step {row['step']}: {note}")
            bar.show(int(row["step"]), row)

    def poll() -> None:
        while not stop.wait(POLL_S):
            show_new_rows()
            bar.tick()

    with StageBar(spec) as bar:
        thread = threading.Thread(target=poll, name=f"progress-{spec.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            show_new_rows()
