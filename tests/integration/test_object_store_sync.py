"""The object-store weight transport on a real Ray cluster: what a receiver fetches is the
weights as published (the put is a copy), read in another process, bit-exact, tied once."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.distributed.weight_sync import ObjectStoreTransport

pytestmark = pytest.mark.integration


def test_a_receiver_in_another_process_gets_the_published_weights(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def fetch_sums(handle) -> dict[str, tuple[str, float, bool]]:
        state = ObjectStoreTransport.fetch(handle)
        return {
            k: (str(v.dtype), float(v.double().sum()), v.data_ptr() == state["embed"].data_ptr())
            for k, v in state.items()
        }

    embed = torch.randn(600, 256)  # 600 KiB: stored in shared memory, not inlined
    state = {
        "embed": embed,
        "norm": torch.randn(256, dtype=torch.bfloat16),
        "layer": torch.randn(256, 256),
        "lm_head": embed,
    }
    want = {k: float(v.double().sum()) for k, v in state.items()}
    handle = ObjectStoreTransport(bucket_bytes=2**20).publish(state, version=1)
    for tensor in state.values():
        tensor.mul_(3.0)  # the learner trains on after the sync
    got = ray.get(fetch_sums.remote(handle))
    assert set(got) == set(want)
    assert got["norm"][0] == "torch.bfloat16" and got["layer"][0] == "torch.float32"
    for name, value in want.items():
        assert got[name][1] == value, name
    assert got["lm_head"][2]  # the tied head is the embedding received once
