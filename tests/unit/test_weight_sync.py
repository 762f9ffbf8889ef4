"""Pure parts of weight sync: bucketing, safetensors packing, broadcast buffer layout."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.distributed.weight_sync import (
    SyncStats,
    bucket_state_dict,
    flatten_bucket,
    pack,
    plan_buckets,
    unflatten_bucket,
    unpack,
)


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
