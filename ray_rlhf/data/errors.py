"""Data validation errors that say where the bad input is.

Every loader in `ray_rlhf.data` checks all rows before returning, collects what is wrong
(up to a limit) and raises one `DataValidationError` that lists the problems with their file,
row and field, plus a count of the rest. Nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray_rlhf.errors import UserError

DEFAULT_PROBLEM_LIMIT = 10
"""How many problems one `DataValidationError` lists before it only counts the rest."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input data.

    Attributes:
        source: File path or dataset name the problem is in.
        row: 0-based row index in `source`, or None if the problem is not about one row.
        field: Column name the problem is in, or None if it is about the whole row / source.
        message: What is wrong, e.g. "empty text".
    """

    source: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f" row {self.row}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DataValidationError(UserError, ValueError):
    """Input data is malformed; raised before any expensive work starts.

    `str(error)` reads like "prefs.jsonl row 3, field 'chosen': empty text". When several
    problems were found they are listed one per line, followed by how many were left out.

    Attributes:
        source: File path or dataset name of the first problem.
        row: 0-based row index of the first problem, or None.
        field: Column name of the first problem, or None.
        problems: Every listed problem, the first one included.
        omitted: How many further problems were found but not listed.
    """

    kind = "data error"
    hint = (
        "Fix or drop the rows named above (layouts and limits: README, 'Your own model and "
        "data'); every data file is checked before Ray starts."
    )

    def __init__(
        self,
        source: str | os.PathLike[str],
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        others: Sequence[Problem] = (),
        omitted: int = 0,
    ) -> None:
        first = Problem(str(source), row, field, message)
        self.problems: tuple[Problem, ...] = (first, *others)
        self.omitted = omitted
        self.source = first.source
        self.row = first.row
        self.field = first.field
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1 and not self.omitted:
            return str(self.problems[0])
        total = len(self.problems) + self.omitted
        lines = [f"{total} data problems:"]
        lines += [f"  {problem}" for problem in self.problems]
        if self.omitted:
            lines.append(f"  ... and {self.omitted} more")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Ray actors); the default pickling would call
        # __init__ with the rendered message only.
        first, *others = self.problems
        kwargs = {"row": first.row, "field": first.field, "others": others, "omitted": self.omitted}
        return (_rebuild_error, (type(self), first.source, first.message, kwargs))


def _rebuild_error(
    cls: type[DataValidationError], source: str, message: str, kwargs: dict[str, Any]
) -> DataValidationError:
    return cls(source, message, **kwargs)


class ProblemCollector:
    """Gathers problems while checking rows, then raises them as one error.

    Args:
        source: Name used for problems reported without a row.
        locate: Maps a row index of the checked dataset to (file name, row in that file);
            used when the dataset was concatenated from several files.
        limit: How many problems to keep in full; the rest are only counted.
    """

    def __init__(
        self,
        source: str,
        *,
        locate: Callable[[int], tuple[str, int]] | None = None,
        limit: int = DEFAULT_PROBLEM_LIMIT,
    ) -> None:
        self._source = source
        self._locate = locate
        self._limit = limit
        self._kept: list[Problem] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: int | None, field: str | None, message: str) -> None:
        """Records one problem at `row` (an index into the checked dataset) and `field`."""
        self._count += 1
        if len(self._kept) >= self._limit:
            return
        source = self._source
        if row is not None and self._locate is not None:
            source, row = self._locate(row)
        self._kept.append(Problem(source, row, field, message))

    def raise_if_any(self) -> None:
        """Raises a `DataValidationError` listing the collected problems, if there are any.

        Raises:
            DataValidationError: At least one problem was added.
        """
        if not self._kept:
            return
        first, *others = self._kept
        raise DataValidationError(
            first.source,
            first.message,
            row=first.row,
            field=first.field,
            others=others,
            omitted=self._count - len(self._kept),
        )
