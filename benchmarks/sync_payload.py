"""The object-store weight sync's payload format, before / after, in one process.

One full sync of a model's weights into an in-process vLLM engine (a `RolloutWorker`),
through the Ray object store, the two variants alternating `--reps` times (medians):

- before: each bucket packed into a safetensors blob (`pack_tensors`), the blobs put,
  fetched (Ray copies `bytes` out of shared memory) and unpacked, then the engine reload;
- after: `ObjectStoreTransport` as shipped: the raw bytes of each tensor put as numpy
  arrays, which the receiver maps from shared memory without a copy, then the engine reload.

Both send the tied `lm_head.weight` once. Prints one JSON line (seconds, ratio).

`python -m benchmarks.sync_payload runs/examples/smollm2/model --reps 6`
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from ray_rlhf.distributed.runtime import worker_env_vars

    os.environ.update(worker_env_vars())  # the rollout actor's engine settings
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.overheads import _alternate
    from ray_rlhf.config import ResourcesConfig, RolloutConfig
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.distributed.weight_sync import (
        ObjectStoreTransport,
        _retie,
        _untied,
        bucket_state_dict,
    )
    from ray_rlhf.rollout.engine import pack_tensors, reload_weights, unpack_tensors
    from ray_rlhf.rollout.worker import RolloutWorker

    torch.set_num_threads(args.threads)
    state = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).state_dict()
    started = init_ray(ResourcesConfig(), min_cpus=1)
    worker = RolloutWorker(
        args.model_dir, RolloutConfig(kv_cache_mib=64, cpus_per_actor=args.threads),
        max_model_len=256,
    )  # fmt: skip
    transport = ObjectStoreTransport()

    def blobs() -> None:
        untied, tied = _untied(state)
        buckets = bucket_state_dict(untied, transport.bucket_bytes)
        refs = [ray.put(pack_tensors(b)) for b in buckets]
        received: dict[str, torch.Tensor] = {}
        for blob in ray.get(refs):
            received.update(unpack_tensors(blob))
        reload_weights(worker._llm, _retie(received, tied))

    def raw_bytes() -> None:
        reload_weights(worker._llm, ObjectStoreTransport.fetch(transport.publish(state, 1)))

    syncs: Callable[[], None]
    try:
        for syncs in (blobs, raw_bytes):  # warm-up: first puts, first reload
            syncs()
        out = {"model_dir": args.model_dir, "threads": args.threads}
        out["sync"] = _alternate(blobs, raw_bytes, args.reps)
    finally:
        worker.shutdown()
        shutdown_ray(started)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
