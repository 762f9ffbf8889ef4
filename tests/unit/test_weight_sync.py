"""Pure parts of weight sync: bucketing, safetensors packing, broadcast buffer layout, tied
weights sent once, and the copy the broadcast keeps for catch-ups (Ray and the process
group replaced by in-process fakes)."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.distributed import weight_sync
from ray_rlhf.distributed.weight_sync import (
    BroadcastTransport,
    ObjectStoreTransport,
    SyncStats,
    bucket_state_dict,
    flatten_bucket,
    plan_buckets,
    tied_names,
    unflatten_bucket,
)
from ray_rlhf.rollout.engine import pack_tensors as pack
from ray_rlhf.rollout.engine import unpack_tensors as unpack


def _state() -> dict[str, torch.Tensor]:
    """Tensors of 40, 8, 400 (oversized), 24 and 16 bytes, mixed dtypes."""
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(10, generator=g),  # 40 B
        "b": torch.randn(2, 2, generator=g).to(torch.bfloat16),  # 8 B
        "big": torch.randn(10, 10, generator=g),  # 400 B
        "c": torch.randn(2, 3, generator=g),  # 24 B
        "d": torch.randn(2, 2, generator=g),  # 16 B
    }


def test_buckets_cover_every_tensor_once_in_order_and_respect_the_size():
    state = _state()
    buckets = bucket_state_dict(state, bucket_bytes=64)
    names = [name for bucket in buckets for name in bucket]
    assert names == list(state)
    assert [list(b) for b in buckets] == [["a", "b"], ["big"], ["c", "d"]]
    for bucket in buckets:
        assert all(bucket[k] is state[k] for k in bucket)
        size = sum(t.numel() * t.element_size() for t in bucket.values())
        assert size <= 64 or len(bucket) == 1


def test_oversized_tensor_gets_its_own_bucket_even_first():
    state = {"big": torch.zeros(100), "x": torch.zeros(1), "y": torch.zeros(1)}
    assert [list(b) for b in bucket_state_dict(state, bucket_bytes=16)] == [["big"], ["x", "y"]]


def test_bucketing_edge_cases():
    assert bucket_state_dict({}, 10) == []
    one_each = bucket_state_dict(_state(), bucket_bytes=1)
    assert [list(b) for b in one_each] == [[k] for k in _state()]
    with pytest.raises(ValueError, match="bucket_bytes"):
        bucket_state_dict(_state(), 0)


def test_pack_unpack_is_bit_exact_and_keeps_order():
    state = _state() | {"int": torch.arange(5), "half": torch.randn(3).half()}
    out = unpack(pack(state))
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_pack_handles_tied_and_non_contiguous_tensors():
    emb = torch.randn(4, 3)
    flat = torch.arange(10.0)
    state = {"embed": emb, "lm_head": emb, "t": emb.t(), "v1": flat[:4], "v2": flat[4:]}
    out = unpack(pack(state))
    for name, tensor in state.items():
        assert torch.equal(out[name], tensor), name


def test_pack_is_not_pickle():
    blob = pack({"w": torch.ones(2)})
    assert not blob.startswith(b"\x80")  # pickle protocol marker
    assert b'"w"' in blob[:200]  # safetensors JSON header


def test_broadcast_plan_groups_by_dtype_and_round_trips():
    state = _state()
    buckets = plan_buckets(state, bucket_bytes=64)
    assert [(b.dtype, b.names) for b in buckets] == [
        ("float32", ("a",)),
        ("float32", ("big",)),
        ("float32", ("c", "d")),
        ("bfloat16", ("b",)),
    ]
    out: dict[str, torch.Tensor] = {}
    for bucket in buckets:
        flat = flatten_bucket(state, bucket)
        assert flat.shape == (bucket.numel,) and flat.dtype == bucket.torch_dtype
        out.update(unflatten_bucket(flat.clone(), bucket))
    assert set(out) == set(state)
    for name, tensor in state.items():
        assert torch.equal(out[name], tensor), name


def test_sync_stats_metrics():
    m = SyncStats(seconds=0.5, num_bytes=1000, num_buckets=2).metrics()
    assert m == {
        "timing/sync_transfer": 0.5,
        "sync/bytes": 1000.0,
        "sync/buckets": 2.0,
        "perf/sync_bytes_per_s": 2000.0,
    }


def _tied_state() -> dict[str, torch.Tensor]:
    """A state dict as a tied-embedding LM's `state_dict()` gives it: `lm_head` is `embed`."""
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(8, 4, generator=g)
    return {
        "embed": embed,
        "layer": torch.randn(4, 4, generator=g),
        "copy_of_embed": embed.clone(),  # equal values, own memory: not tied
        "embed_t": embed.t(),  # same memory, other strides: not tied
        "lm_head": embed.detach(),  # what state_dict() returns: a new tensor, same memory
        "half": torch.randn(3, generator=g).half(),
    }


def test_tied_names_are_views_of_the_same_tensor_only():
    assert tied_names(_tied_state()) == {"lm_head": "embed"}
    assert tied_names(_state()) == {}
    empty = torch.zeros(0)
    assert tied_names({"a": empty, "b": empty}) == {}  # nothing to send twice


def test_broadcast_sends_a_tied_tensor_once_and_the_receiver_gets_both_names():
    state = _tied_state()
    buckets = plan_buckets(state, bucket_bytes=64)
    sent = [name for b in buckets for name in b.names]
    assert "lm_head" not in sent and sorted(sent) == sorted(set(state) - {"lm_head"})
    (holder,) = [b for b in buckets if b.tied]
    assert holder.tied == (("lm_head", "embed"),) and "embed" in holder.names
    out: dict[str, torch.Tensor] = {}
    for bucket in buckets:
        out.update(unflatten_bucket(flatten_bucket(state, bucket).clone(), bucket))
    assert set(out) == set(state)
    assert out["lm_head"] is out["embed"]
    for name, tensor in state.items():
        assert torch.equal(out[name], tensor), name


class _FakeRef:
    def __init__(self, value):
        self.value = value


@pytest.fixture
def in_process_ray(monkeypatch):
    """`ray.put` / `ray.get` without a cluster."""
    monkeypatch.setattr(weight_sync.ray, "put", _FakeRef)
    monkeypatch.setattr(
        weight_sync.ray, "get", lambda r: [x.value for x in r] if isinstance(r, list) else r.value
    )


def test_object_store_sends_a_tied_tensor_once(in_process_ray):
    state = _tied_state()
    handle = ObjectStoreTransport(bucket_bytes=64).publish(state, version=3)
    assert [b.tied for b in handle.buckets if b.tied] == [(("lm_head", "embed"),)]
    untied_bytes = sum(t.numel() * t.element_size() for k, t in state.items() if k != "lm_head")
    assert handle.num_bytes == untied_bytes
    sent = [raw for ref in handle.refs for raw in ref.value]
    assert sum(raw.nbytes for raw in sent) == untied_bytes  # lm_head's bytes are not sent
    assert all("lm_head" not in b.names for b in handle.buckets)
    out = ObjectStoreTransport.fetch(handle)
    assert set(out) == set(state) and out["lm_head"] is out["embed"]
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name


def test_object_store_round_trips_mixed_dtypes(in_process_ray):
    """bfloat16, int64 and float32 tensors come back bit-exact, in their shapes."""
    state = {
        "a": torch.randn(3, 5, dtype=torch.bfloat16),
        "b": torch.arange(6).view(2, 3),
        "c": torch.randn(4),
    }
    out = ObjectStoreTransport.fetch(ObjectStoreTransport(bucket_bytes=16).publish(state, 1))
    assert list(out) == ["a", "b", "c"]
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor), name


class _FakeGroup:
    """Records what rank 0 broadcast (a copy of each buffer)."""

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []

    def broadcast(self, tensors, opts):  # noqa: ANN001
        self.sent.append(tensors[0].clone())
        return self

    def wait(self) -> None:
        return None


def _connected(bucket_bytes: int = 64) -> tuple[BroadcastTransport, _FakeGroup]:
    transport = BroadcastTransport(bucket_bytes=bucket_bytes)
    transport._group = group = _FakeGroup()
    return transport, group


def test_broadcast_send_keeps_a_copy_that_later_in_place_updates_do_not_touch(in_process_ray):
    """The learner's state dict below ZeRO-3 is its live parameters; what the transport
    returns for catch-ups must stay the version that was sent."""
    state = _tied_state()
    before = {k: v.clone() for k, v in state.items()}
    transport, group = _connected()
    stats, sent = transport.send([], state, version=1)
    assert stats.num_buckets == len(group.sent)
    assert stats.num_bytes == sum(t.numel() * t.element_size() for t in group.sent)
    for tensor in state.values():
        tensor.add_(1.0)  # an optimizer step, in place (embed and lm_head: once)
    assert set(sent) == set(before) and sent["lm_head"] is sent["embed"]
    for name, tensor in before.items():
        assert torch.equal(sent[name], tensor), name


def test_pool_catches_actors_up_with_the_version_sent_not_the_live_weights(
    in_process_ray, monkeypatch
):
    """`RolloutPool` (without actors) on the broadcast transport: after a sync of weights
    that then train in place, a catch-up publishes the weights of the sync."""
    from ray_rlhf.distributed.rollout_pool import RolloutPool

    pool = object.__new__(RolloutPool)
    pool._broadcast, _ = _connected()
    pool._broadcast.group_id = "g"
    pool._object_store = ObjectStoreTransport(bucket_bytes=64)
    pool._actors, pool._version, pool._handle, pool._state = [], 0, None, None
    monkeypatch.setattr(pool, "_ensure_group", lambda transport: 0.0)
    # No owner actor either (a stand-in marks the pool open): this copy's membership and
    # version are the ones set above.
    pool._owner = "no owner actor"
    monkeypatch.setattr(pool, "_refresh", lambda: None)
    monkeypatch.setattr(pool, "_commit", lambda: None)
    live = _tied_state()
    synced = {k: v.clone() for k, v in live.items()}
    metrics = pool.update_weights(live, version=1)
    assert metrics["sync/bytes"] == sum(
        t.numel() * t.element_size() for k, t in live.items() if k != "lm_head"
    )
    for tensor in live.values():
        tensor.mul_(2.0)  # training moves on before the next sync
    pool._catch_up([])
    caught_up = ObjectStoreTransport.fetch(pool._handle)
    assert pool._handle.version == 1
    for name, tensor in synced.items():
        assert torch.equal(caught_up[name], tensor), name
