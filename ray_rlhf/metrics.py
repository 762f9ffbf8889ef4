"""Metrics sink: JSONL (one object per step) and TensorBoard event files under a run dir.

Keys are namespaced (`train/loss`, `timing/step`, `perf/tokens_per_s`, `eval/true_reward`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append-only metrics log. Use as a context manager or call `close()`.

    A stage that resumes from a checkpoint passes `resume_step` (the step the checkpoint
    restored; 0 when nothing was restored): rows logged after that step by the interrupted
    run are dropped from `metrics.jsonl` and hidden in TensorBoard (its `purge_step`), so
    every step appears exactly once when the resumed run logs it again.
    """

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "metrics.jsonl"
        if resume_step is not None:
            _drop_rows_after(path, resume_step)
        self._jsonl = path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else _first_dropped(resume_step)
            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record `metrics` at `step`; non-numeric values go to JSONL only."""
        row = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(row, default=float) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        """Flush and close both sinks."""
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's `metrics.jsonl` (empty list when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first_dropped(resume_step: int) -> int:
    """The first step a resume at `resume_step` logs again (everything when it is 0)."""
    return resume_step + 1 if resume_step > 0 else 0


def _drop_rows_after(path: Path, resume_step: int) -> None:
    """Rewrite `path` without the rows a resume at `resume_step` logs again (atomic)."""
    if not path.is_file():
        return
    first = _first_dropped(resume_step)
    lines = path.read_text().splitlines(keepends=True)
    kept = [
        line
        for line in lines
        if line.strip() and line.endswith("\n") and json.loads(line)["step"] < first
    ]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(kept))
    tmp.replace(path)
