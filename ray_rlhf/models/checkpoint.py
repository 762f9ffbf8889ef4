"""Safetensors + JSON checkpoint I/O, written atomically.

Every writer here goes through a temporary sibling (file or directory) and a rename, so a
crash mid-write never leaves a half-written file or directory at the destination. Nothing
is ever unpickled: weights are safetensors only and state is JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ray_rlhf.errors import UserError

METADATA_FILE = "ray_rlhf.json"
"""Name of the JSON file `save_hf_model` writes next to the weights when given metadata."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelDirError(UserError, ValueError):
    """A model directory is missing, incomplete, unreadable or of an unusable kind."""

    kind = "model error"
    hint = (
        "model.path (and reward.model_path) must be a local Hugging Face model directory with "
        "config.json, tokenizer files and *.safetensors weights."
    )


def _sibling(path: Path, tag: str) -> Path:
    """Returns a unique hidden sibling of `path` (same filesystem, so rename is atomic)."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling directory that replaces `out_dir` only on success.

    On an exception the temporary directory is removed and `out_dir` is left as it was.
    An existing `out_dir` is moved aside, replaced, then deleted; POSIX cannot atomically
    swap two non-empty directories, so there is a short window in which `out_dir` does not
    exist, but it is never half-written.

    Args:
        out_dir: Final directory.

    Yields:
        The temporary directory to write into.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _sibling(out, "old") if out.exists() else None
    if old is not None:
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _atomic_file(path: Path, write: Any) -> None:
    """Calls `write(tmp_path)` and renames the result onto `path`; cleans up on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` through a temporary file and a rename.

    Args:
        path: Destination file.
        obj: A JSON-serializable object.
    """
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_json(path: str | os.PathLike[str]) -> Any:
    """Reads a JSON file.

    Args:
        path: File to read.

    Returns:
        The decoded object.
    """
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies where needed; tensors sharing storage are cloned.

    safetensors refuses tensors that share memory (e.g. tied embedding and LM-head weights).
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    return out


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Saves named tensors to one safetensors file, atomically.

    Args:
        path: Destination `.safetensors` file.
        tensors: Name → tensor; any device, layout or storage sharing.
        metadata: Optional string → string header metadata.
    """
    data = _unshared(tensors)
    _atomic_file(Path(path), lambda tmp: save_file(data, str(tmp), metadata=metadata))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Loads every tensor of a safetensors file onto the CPU.

    Args:
        path: A `.safetensors` file.

    Returns:
        Name → tensor.
    """
    return load_file(str(path), device="cpu")


def save_hf_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Saves an HF model (safetensors) and its tokenizer into `out_dir`, atomically.

    Args:
        model: A `transformers.PreTrainedModel`.
        tokenizer: Its tokenizer, or None to save the model only.
        out_dir: Destination directory (replaced if it exists).
        metadata: JSON-serializable run metadata, written to `ray_rlhf.json` when given.

    Returns:
        `out_dir` as a Path.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if metadata is not None:
            save_json_atomic(tmp / METADATA_FILE, metadata)
    return Path(out_dir)


def _read_config(path: Path) -> dict[str, Any]:
    """Reads and checks `config.json` of a model directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"model dir {path} has no config.json; is it a HF model directory?")
    try:
        config = load_json(config_file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"model dir {path}: config.json is unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelDirError(f"model dir {path}: config.json must hold a JSON object")
    return config


_MAX_HEADER_BYTES = 100_000_000
"""The largest safetensors JSON header the format allows (safetensors' own limit)."""


def _offsets_problem(header: dict[str, Any], data_bytes: int) -> str | None:
    """What is wrong with a safetensors header's `data_offsets` for `data_bytes` bytes of
    tensor data (None: the tensors cover exactly those bytes, as the format requires)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        valid = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        )
        if not valid:
            return f"tensor {name!r} has no valid data_offsets in the header"
        end = max(end, offsets[1])
    if end > data_bytes:
        return f"the header indexes {end} bytes of tensor data, the file holds {data_bytes}"
    if end < data_bytes:
        return f"{data_bytes - end} bytes after the last tensor the header indexes"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, from its header only (None: it looks whole).

    The format: an 8-byte little-endian header length N, N bytes of a JSON object mapping
    each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets into the data
    that follows the header), then the tensor data. No tensor is read.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, too short for the 8-byte header length"
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_HEADER_BYTES):
            return f"a header length of {length} bytes, but the file has {size} bytes"
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"the header is not JSON ({exc})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    return _offsets_problem(header, size - 8 - length)


def _check_safetensors(path: Path) -> None:
    """Checks every `*.safetensors` file's header against its size (truncated or corrupt
    downloads and copies), reading headers only."""
    for weights in sorted(path.glob("*.safetensors")):
        try:
            problem = _safetensors_problem(weights)
        except OSError as exc:
            problem = f"unreadable ({exc})"
        if problem is not None:
            where = f"model dir {path}: weight file {weights.name}"
            error = ModelDirError(f"{where} is truncated or corrupt: {problem}")
            error.hint = (
                f"Replace {weights}: download the model again (or copy it again in full), or "
                "re-export it with save_pretrained(...), which writes *.safetensors."
            )
            raise error


def _check_weights(path: Path) -> None:
    """Checks that a model directory holds whole safetensors weights (not only pickles)."""
    if any(path.glob("*.safetensors")):
        _check_safetensors(path)
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ModelDirError(
            f"model dir {path} has only pickle weight files ({', '.join(pickles)}); "
            "ray_rlhf loads *.safetensors only because unpickling can run arbitrary code. "
            "Convert the weights to safetensors with a trusted tool first."
        )
    raise ModelDirError(f"model dir {path} has no weight files (*.safetensors)")


def validate_model_dir(path: str | os.PathLike[str]) -> Path:
    """Checks that `path` is a loadable HF model directory, before any model is built.

    Args:
        path: Model directory.

    Returns:
        The directory as a resolved Path.

    Raises:
        ModelDirError: If the directory does not exist, has no or an invalid
            `config.json`, has no `*.safetensors` weights (pickle-only directories
            are refused), or a safetensors file whose header does not fit its size
            (truncated or corrupt; only the headers are read).
    """
    model_dir = Path(path).expanduser().resolve()
    if not model_dir.is_dir():
        raise ModelDirError(f"model dir {model_dir} does not exist or is not a directory")
    _read_config(model_dir)
    _check_weights(model_dir)
    return model_dir


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def max_positions(model_dir: str | os.PathLike[str]) -> int | None:
    """The longest sequence a model directory's `config.json` declares.

    Returns:
        The first positive integer among `_POSITION_KEYS` (Llama-style
        `max_position_embeddings`, GPT-2-style `n_positions`, ...), or None if there is none.

    Raises:
        ModelDirError: If the directory is not a valid model directory.
    """
    config = _read_config(validate_model_dir(model_dir))
    for key in _POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def count_parameters(model_dir: str | os.PathLike[str]) -> int:
    """Parameters stored in a model dir's safetensors files, from their headers (a tied
    head stored once counts once; no weights are read).

    Raises:
        ModelDirError: If the directory is not a valid model directory.
    """
    from safetensors import safe_open

    parameters = 0
    for weights in sorted(validate_model_dir(model_dir).glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():
                parameters += math.prod(f.get_slice(name).get_shape())
    return parameters


def describe_model_dir(model_dir: str | os.PathLike[str]) -> str:
    """`llama, 2 layers, hidden 64, 0.2M parameters`: a model dir's shape for the run's
    header, from `config.json` and the safetensors headers (no weights are read).

    Raises:
        ModelDirError: If the directory is not a valid model directory.
    """
    path = validate_model_dir(model_dir)
    config = _read_config(path)
    parameters = count_parameters(path)
    size = f"{parameters / 1e6:.1f}M" if parameters >= 1e5 else f"{parameters / 1e3:.0f}K"
    return (
        f"{config.get('model_type', 'unknown type')}, {config.get('num_hidden_layers', '?')} "
        f"layers, hidden {config.get('hidden_size', '?')}, {size} parameters"
    )
