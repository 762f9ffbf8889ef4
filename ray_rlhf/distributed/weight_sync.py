"""Learner -> rollout weight sync: one interface, two transports, everything timed.

- `ObjectStoreTransport`: the sender puts buckets of the state dict in the Ray object store
  (the raw bytes of each tensor as a numpy array: one copy in, none out, since receivers on
  the node map the shared memory); the `WeightsHandle` (ObjectRefs, layout, version) is
  cheap to hand to any number of actors, which fetch it. Works everywhere.
- `BroadcastTransport`: a standalone torch.distributed group (gloo on CPU; NCCL on GPU,
  present but untested) with the sender as rank 0 and rollout actors as ranks 1..R. It is
  built from its own `TCPStore` on a fresh port, so it never touches the default process
  group that Ray Train / DeepSpeed own, and it is rebuilt whenever the membership changes.
  Per sync, the bucket layout (names, shapes, dtypes) goes to each receiver in the Ray call
  that starts the sync; the data goes through the group as one flat buffer per bucket,
  buckets being homogeneous in dtype.

Tied weights (e.g. `lm_head.weight`, the same tensor as `model.embed_tokens.weight`) travel
once: the sender finds entries that are views of one tensor (`tied_names`) and sends the
name of the tensor they alias instead. Receivers (`fetch`, `BroadcastReceiver`) return full
HF-named state dicts, the tied names pointing at the tensor received once (vLLM skips a
tied `lm_head.weight` anyway); applying them to an engine is `RolloutWorker.load_weights`'s
job. Payloads are raw tensor bytes plus a layout (names, shapes, dtypes): no pickled objects.
"""

from __future__ import annotations

import datetime
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ray
import torch
import torch.distributed as dist

__all__ = [
    "BroadcastReceiver",
    "BroadcastTransport",
    "Bucket",
    "GroupSpec",
    "ObjectStoreTransport",
    "SyncStats",
    "WeightsHandle",
    "bucket_state_dict",
    "flatten_bucket",
    "plan_buckets",
    "tied_names",
    "unflatten_bucket",
]

DEFAULT_BUCKET_BYTES = 64 * 2**20
Backend = Literal["gloo", "nccl"]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class SyncStats:
    """What one sync moved and how long it took (publish/broadcast through engine reload)."""

    seconds: float
    num_bytes: int
    """Payload: the bytes of one copy of the weights, tied tensors once (not multiplied by
    receivers)."""
    num_buckets: int

    def metrics(self) -> dict[str, float]:
        """`timing/sync_transfer`, `sync/bytes`, `sync/buckets`, `perf/sync_bytes_per_s`."""
        return {
            "timing/sync_transfer": self.seconds,
            "sync/bytes": float(self.num_bytes),
            "sync/buckets": float(self.num_buckets),
            "perf/sync_bytes_per_s": self.num_bytes / max(self.seconds, 1e-9),
        }


def tied_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Entries that are the same tensor as an earlier entry (tied weights).

    Two entries are tied when they view the same memory with the same dtype, shape and
    strides (what `state_dict()` gives for a tied `lm_head.weight`); a copy is not tied.

    Returns:
        {name: name of the first entry it ties to}, in `state`'s order.
    """
    first: dict[tuple[Any, ...], str] = {}
    tied: dict[str, str] = {}
    for name, t in state.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and key in first:
            tied[name] = first[key]
        else:
            first.setdefault(key, name)
    return tied


def _untied(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`state` without its tied entries, and `tied_names(state)`."""
    tied = tied_names(state)
    return {k: v for k, v in state.items() if k not in tied}, tied


def _retie(state: dict[str, torch.Tensor], tied: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Add each tied name to `state` (in place), as the tensor it ties to."""
    for name, source in tied.items():
        state[name] = state[source]
    return state


def bucket_state_dict(
    state: Mapping[str, torch.Tensor], bucket_bytes: int
) -> list[dict[str, torch.Tensor]]:
    """Split a state dict into ordered buckets of at most `bucket_bytes` each.

    Every tensor lands in exactly one bucket, in the original order; a tensor larger than
    `bucket_bytes` gets a bucket of its own.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in state.items():
        n = _nbytes(tensor)
        if current and size + n > bucket_bytes:
            buckets.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += n
    if current:
        buckets.append(current)
    return buckets


# --------------------------------------------------------------------------- object store


@dataclass(frozen=True)
class WeightsHandle:
    """Weights in the Ray object store: per bucket, one object holding the raw bytes of each
    of its tensors (numpy arrays, so receivers on the node map them without a copy).

    The ObjectRefs are nested in this object, so Ray passes them to actor calls unresolved
    (cheap to send to many actors); the objects live while the sender's handle does.
    """

    version: int
    refs: tuple[Any, ...]
    num_bytes: int
    """Payload bytes (one copy of the weights, tied tensors once)."""
    publish_seconds: float
    """Time spent putting."""
    buckets: tuple[Bucket, ...] = ()
    """Layout of each ref's tensors (names, shapes, dtype; tied entries left out)."""


def _raw_bytes(t: torch.Tensor) -> Any:
    """(nbytes,) uint8 numpy view of a CPU tensor's data (any dtype, bfloat16 included)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _from_raw_bytes(raw: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `_raw_bytes`; shares memory with `raw` (read-only when it comes from the
    object store: the engine copies it into its own parameters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(raw).view(dtype).view(shape)


class ObjectStoreTransport:
    """Sender: `publish`; receiver: `fetch` (inside the rollout actor)."""

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.bucket_bytes = bucket_bytes

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> WeightsHandle:
        """Copy the bucketed state into the object store (one copy; timed in the handle)."""
        t0 = time.perf_counter()
        buckets = plan_buckets(state, self.bucket_bytes)
        refs = tuple(ray.put([_raw_bytes(state[n]) for n in b.names]) for b in buckets)
        num_bytes = sum(b.numel * b.torch_dtype.itemsize for b in buckets)
        seconds = time.perf_counter() - t0
        return WeightsHandle(version, refs, num_bytes, seconds, tuple(buckets))

    @staticmethod
    def fetch(handle: WeightsHandle) -> dict[str, torch.Tensor]:
        """The full state dict behind `handle`, bucket by bucket (each bucket's tied names
        after its own tensors, as the entries they tie to)."""
        state: dict[str, torch.Tensor] = {}
        for raws, bucket in zip(ray.get(list(handle.refs)), handle.buckets, strict=True):
            dtype = bucket.torch_dtype
            for name, raw, shape in zip(bucket.names, raws, bucket.shapes, strict=True):
                state[name] = _from_raw_bytes(raw, dtype, shape)
            _retie(state, dict(bucket.tied))
        return state


# --------------------------------------------------------------------------- broadcast


@dataclass(frozen=True)
class Bucket:
    """Layout of one flat broadcast buffer: consecutive tensors of one dtype."""

    dtype: str
    """torch dtype name without the `torch.` prefix, e.g. `bfloat16`."""
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    tied: tuple[tuple[str, str], ...] = ()
    """(name, name in `names` it ties to): entries received as views of another's data."""

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a `torch.dtype`."""
        return getattr(torch, self.dtype)

    @property
    def numel(self) -> int:
        """Elements of the flat buffer."""
        return sum(_numel(s) for s in self.shapes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_buckets(state: Mapping[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """Layout of the broadcast: tensors grouped by dtype (first-seen order), then bucketed;
    a tied entry is not sent but listed in the bucket of the tensor it ties to."""
    untied, tied = _untied(state)
    by_dtype: dict[torch.dtype, dict[str, torch.Tensor]] = {}
    for name, tensor in untied.items():
        by_dtype.setdefault(tensor.dtype, {})[name] = tensor
    return [
        Bucket(
            dtype=str(dtype).removeprefix("torch."),
            names=tuple(bucket),
            shapes=tuple(tuple(t.shape) for t in bucket.values()),
            tied=tuple((name, source) for name, source in tied.items() if source in bucket),
        )
        for dtype, tensors in by_dtype.items()
        for bucket in bucket_state_dict(tensors, bucket_bytes)
    ]


def flatten_bucket(state: Mapping[str, torch.Tensor], bucket: Bucket) -> torch.Tensor:
    """(numel,) the bucket's tensors, flattened and concatenated in layout order."""
    return torch.cat([state[name].detach().reshape(-1) for name in bucket.names])


def unflatten_bucket(flat: torch.Tensor, bucket: Bucket) -> dict[str, torch.Tensor]:
    """Inverse of `flatten_bucket`: views of `flat` (numel,) with the layout's shapes, the
    bucket's tied names last (the same views as the entries they tie to)."""
    sizes = [_numel(s) for s in bucket.shapes]
    parts = torch.split(flat, sizes)
    state = {
        name: part.view(shape)
        for name, part, shape in zip(bucket.names, parts, bucket.shapes, strict=True)
    }
    return _retie(state, dict(bucket.tied))


@dataclass(frozen=True)
class GroupSpec:
    """How a receiver joins a broadcast group (sent to it through Ray)."""

    group_id: str
    host: str
    port: int
    world_size: int
    backend: Backend
    timeout_s: float


def _new_group(spec: GroupSpec, rank: int, store: Any) -> Any:
    """A process group outside torch.distributed's default world (no init_process_group)."""
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    if spec.backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, spec.world_size, timeout)
    # GPU path: untested here (no GPU on the project's machines).
    return dist.ProcessGroupNCCL(store, rank, spec.world_size)


def _device(backend: Backend) -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )


def _broadcast(group: Any, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


class BroadcastTransport:
    """Sender side (rank 0) of the broadcast group; lives in the process holding the weights.

    Picklable: a copy (e.g. the pool passed into a Ray Train worker) starts unconnected and
    builds its own group on first use.
    """

    def __init__(
        self,
        *,
        backend: Backend = "gloo",
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        timeout_s: float = 300.0,
    ) -> None:
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self._group: Any = None
        self._store: Any = None
        self.group_id: str | None = None
        """Id of the live group (receivers report theirs; a mismatch means rebuild)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group": None, "_store": None, "group_id": None}

    def connect(self, receivers: Sequence[Any]) -> float:
        """Build a new group: this process as rank 0, `receivers[i]` (actors) as rank i + 1.

        Returns:
            Seconds taken.
        """
        t0 = time.perf_counter()
        self.close()
        host = ray.util.get_node_ip_address()
        world = len(receivers) + 1
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(
            host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False
        )
        spec = GroupSpec(uuid.uuid4().hex, host, store.port, world, self.backend, self.timeout_s)
        joins = [r.join_broadcast_group.remote(spec, i + 1) for i, r in enumerate(receivers)]
        self._group = _new_group(spec, 0, store)
        ray.get(joins)
        self._store, self.group_id = store, spec.group_id
        return time.perf_counter() - t0

    def send(
        self, receivers: Sequence[Any], state: Mapping[str, torch.Tensor], version: int
    ) -> tuple[SyncStats, dict[str, torch.Tensor]]:
        """Broadcast `state` to every receiver, which applies it as `version`.

        The receivers' `receive_broadcast(buckets, version)` runs concurrently with the
        broadcasts issued here; this returns once every receiver has applied the weights.

        Returns:
            The stats, and the weights as sent: views of the flat buffers broadcast (copies
            `flatten_bucket` made anyway), so they stay the sent version when `state` (e.g.
            the learner's live parameters) changes in place afterwards.
        """
        if self._group is None:
            raise RuntimeError("BroadcastTransport.send before connect")
        t0 = time.perf_counter()
        buckets = plan_buckets(state, self.bucket_bytes)
        done = [r.receive_broadcast.remote(buckets, version) for r in receivers]
        device = _device(self.backend)
        sent: dict[str, torch.Tensor] = {}
        for bucket in buckets:
            flat = flatten_bucket(state, bucket)  # a new (numel,) buffer: torch.cat copies
            _broadcast(self._group, flat.to(device))
            sent.update(unflatten_bucket(flat, bucket))
        ray.get(done)
        num_bytes = sum(b.numel * b.torch_dtype.itemsize for b in buckets)
        return SyncStats(time.perf_counter() - t0, num_bytes, len(buckets)), sent

    def close(self) -> None:
        """Drop the group (receivers' ends fail fast instead of waiting for the timeout)."""
        if self._group is not None:
            self._group.shutdown()
        self._group = self._store = self.group_id = None


class BroadcastReceiver:
    """Receiver side (rank >= 1), held by a rollout actor."""

    def __init__(self) -> None:
        self._group: Any = None
        self._spec: GroupSpec | None = None

    @property
    def group_id(self) -> str | None:
        """Id of the group this receiver belongs to (None: none)."""
        return None if self._spec is None else self._spec.group_id

    def join(self, spec: GroupSpec, rank: int) -> None:
        """Leave any previous group and join `spec` as `rank` (blocks until all ranks join)."""
        self.close()
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        store = dist.TCPStore(
            spec.host, spec.port, spec.world_size, is_master=False, timeout=timeout
        )
        self._group = _new_group(spec, rank, store)
        self._spec = spec

    def receive(self, buckets: Sequence[Bucket]) -> dict[str, torch.Tensor]:
        """Receive one sync's buckets; returns the state dict (views of the flat buffers)."""
        if self._group is None or self._spec is None:
            raise RuntimeError("BroadcastReceiver.receive before join")
        device = _device(self._spec.backend)
        state: dict[str, torch.Tensor] = {}
        for bucket in buckets:
            flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device)
            _broadcast(self._group, flat)
            state.update(unflatten_bucket(flat, bucket))
        return state

    def close(self) -> None:
        """Leave the current group, if any."""
        if self._group is not None:
            self._group.shutdown()
        self._group = self._spec = None
