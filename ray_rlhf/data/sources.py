"""Open a dataset from a local file, a directory of files, an in-memory Dataset or the hub.

Local JSON is parsed here (not by `datasets`' JSON builder) so that a bad line is reported
with its file and line, a non-object row is an error rather than a new "text" column, and a
column whose type varies between rows is kept as `datasets.Json()` so the row-level checks
can name the row. Parquet is read with pyarrow.
"""

from __future__ import annotations

import json
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from ray_rlhf.data.errors import DataValidationError, ProblemCollector

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet")
"""File types `open_dataset` reads; a directory may hold only these (plus hidden files)."""

# A string that does not exist locally is a hub name unless it looks like a path.
_PATH_LIKE = re.compile(r"^(\.{0,2}/|~)|\.(jsonl?|parquet|csv|tsv|txt|arrow)$", re.IGNORECASE)


@dataclass(frozen=True)
class DataSource:
    """An opened dataset with the names used in error messages.

    Attributes:
        dataset: All rows, in file order (files of a directory in name order).
        name: Display name: the path as given, the hub name, or "<in-memory Dataset>".
        parts: (display name, number of rows) of each file the rows came from, in order.
    """

    dataset: datasets.Dataset
    name: str
    parts: tuple[tuple[str, int], ...]

    def locate(self, row: int) -> tuple[str, int]:
        """Maps a row of `dataset` to (file display name, 0-based row in that file)."""
        starts = [0, *accumulate(n for _, n in self.parts)]
        part = bisect_right(starts, row) - 1
        return self.parts[part][0], row - starts[part]

    def describe(self, row: int) -> str:
        """Says where a row is, e.g. "data/b.jsonl row 4"."""
        name, local_row = self.locate(row)
        return f"{name} row {local_row}"

    def collector(self) -> ProblemCollector:
        """Returns a `ProblemCollector` that reports rows in their own files."""
        return ProblemCollector(self.name, locate=self.locate)


def open_dataset(
    source: str | Path | datasets.Dataset, *, split: str = "train"
) -> tuple[datasets.Dataset, str]:
    """Opens a dataset and returns it with a display name for messages.

    Args:
        source: A .json (array of objects, or JSON lines), .jsonl or .parquet file; a directory
            holding only such files (read in name order, as one split); an in-memory
            `datasets.Dataset`; otherwise a hub dataset name.
        split: Split to load from the hub. Local files and directories are one split each
            and ignore it.

    Returns:
        The dataset and its display name.

    Raises:
        DataValidationError: The file is missing, unsupported, unreadable or corrupt, holds
            no rows, or the hub dataset cannot be loaded (always the case in offline mode).
    """
    opened = open_source(source, split=split)
    return opened.dataset, opened.name


def open_source(source: str | Path | datasets.Dataset, *, split: str = "train") -> DataSource:
    """Like `open_dataset`, but keeps which file each row came from (see `DataSource`)."""
    opened = _open_any(source, split)
    if opened.dataset.num_rows == 0:
        raise DataValidationError(opened.name, "dataset has no rows")
    return opened


def _open_any(source: object, split: str) -> DataSource:
    if isinstance(source, datasets.Dataset):
        dataset_name = source.info.dataset_name
        name = f"<Dataset {dataset_name}>" if dataset_name else "<in-memory Dataset>"
        return DataSource(source, name, ((name, source.num_rows),))
    if isinstance(source, datasets.DatasetDict | datasets.IterableDataset):
        raise DataValidationError(
            f"<{type(source).__name__}>",
            "pass one in-memory split, e.g. dataset_dict['train'] (streaming is not supported)",
        )
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source must be a path, a hub name or a datasets.Dataset, got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        return _open_directory(path, str(source))
    if path.is_file():
        dataset = _read_file(path, str(source))
        return DataSource(dataset, str(source), ((str(source), dataset.num_rows),))
    if isinstance(source, os.PathLike) or _PATH_LIKE.search(source):
        raise DataValidationError(source, "file not found")
    return _open_hub(source, split)


def _open_directory(path: Path, name: str) -> DataSource:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    unsupported = [p.name for p in entries if not (p.is_file() and _is_supported(p))]
    if unsupported:
        raise DataValidationError(
            name,
            f"a data directory may hold only {', '.join(SUPPORTED_SUFFIXES)} files; "
            f"found {', '.join(unsupported)}",
        )
    if not entries:
        raise DataValidationError(name, f"directory has no {', '.join(SUPPORTED_SUFFIXES)} files")
    names = [os.path.join(name, p.name) for p in entries]
    parts = [
        (file_name, _read_file(p, file_name)) for file_name, p in zip(names, entries, strict=True)
    ]
    _check_same_columns(parts)
    try:
        dataset = datasets.concatenate_datasets([d for _, d in parts])
    except ValueError as err:
        first_name, first = parts[0]
        culprit = next(file_name for file_name, d in parts if d.features != first.features)
        raise DataValidationError(
            culprit, f"column types differ from those of {first_name}: {err}"
        ) from err
    return DataSource(dataset, name, tuple((file_name, d.num_rows) for file_name, d in parts))


def _check_same_columns(parts: list[tuple[str, datasets.Dataset]]) -> None:
    first_name, first = parts[0]
    for file_name, dataset in parts[1:]:
        missing = sorted(set(first.column_names) - set(dataset.column_names))
        extra = sorted(set(dataset.column_names) - set(first.column_names))
        if missing or extra:
            raise DataValidationError(
                file_name,
                f"columns differ from {first_name}: missing {missing or 'none'}, "
                f"extra {extra or 'none'}",
            )


def _open_hub(name: str, split: str) -> DataSource:
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # any failure of the hub path becomes one clear error
        offline = datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE
        hint = (
            "HF offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), so hub datasets "
            "cannot be downloaded; "
            if offline
            else ""
        )
        raise DataValidationError(
            name,
            f"not a local file or directory, and loading it as hub dataset (split {split!r}) "
            f"failed: {err}. {hint}pass a local {', '.join(SUPPORTED_SUFFIXES)} file or directory",
        ) from err
    if not isinstance(dataset, datasets.Dataset):
        raise DataValidationError(name, f"hub dataset split {split!r} is not a map-style Dataset")
    return DataSource(dataset, name, ((name, dataset.num_rows),))


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _is_supported(path: Path) -> bool:
    return _suffix(path) in SUPPORTED_SUFFIXES


def _read_file(path: Path, name: str) -> datasets.Dataset:
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataValidationError(
            name, f"unsupported file type {suffix or '(none)'!r}; use one of {SUPPORTED_SUFFIXES}"
        )
    if suffix == ".parquet":
        return _read_parquet(path, name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        message = f"not UTF-8 text ({err.reason} at byte {err.start})"
        raise DataValidationError(name, message) from err
    except OSError as err:
        raise DataValidationError(name, f"cannot read file: {err.strerror or err}") from err
    return _records_to_dataset(_parse_json(text, suffix, name))


def _read_parquet(path: Path, name: str) -> datasets.Dataset:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataValidationError(name, f"unreadable or corrupt parquet file: {err}") from err
    return datasets.Dataset(table)


def _parse_json(text: str, suffix: str, name: str) -> list[dict[str, Any]]:
    """Parses a .jsonl file as JSON lines, a .json file as an array of objects or JSON lines."""
    if suffix == ".jsonl":
        return _parse_json_lines(text, name)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):
            raise DataValidationError(
                name, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from err
        return _parse_json_lines(text, name)
    if isinstance(document, dict):
        raise DataValidationError(
            name,
            "a .json file must hold an array of objects or JSON lines; this one is a single "
            f"object with keys {sorted(document)[:5]}",
        )
    if not isinstance(document, list):
        raise DataValidationError(name, f"expected an array of objects, got {_json_type(document)}")
    return _check_objects(document, name)


def _check_objects(records: list[Any], name: str) -> list[dict[str, Any]]:
    problems = ProblemCollector(name)
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            problems.add(row, None, f"expected a JSON object, got {_json_type(record)}")
    problems.raise_if_any()
    return records


def _parse_json_lines(text: str, name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    problems = ProblemCollector(name)
    for line_no, line in _non_blank_lines(text):
        row = len(records)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.add(row, None, f"line {line_no}: invalid JSON ({err.msg}, column {err.colno})")
            record = {}
        if not isinstance(record, dict):
            kind = _json_type(record)
            problems.add(row, None, f"line {line_no}: expected a JSON object, got {kind}")
        records.append(record)
    problems.raise_if_any()
    return records


def _non_blank_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line) for each line that is not blank."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield line_no, line


def _records_to_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
    # Union of keys in first-seen order: `from_list` would drop keys absent from row 0.
    columns = list(dict.fromkeys(key for record in records for key in record))
    mapping = {key: [record.get(key) for record in records] for key in columns}
    return datasets.Dataset.from_dict(mapping, on_mixed_types="use_json")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
