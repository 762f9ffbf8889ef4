"""Rollout scaling and weight sync, measured on real `RolloutPool`s (project venv).

- scaling: the iteration's generation (same prompts, n, forced tokens) on a pool of 1 actor
  x 2 threads and a pool of 2 actors x 1 thread (the same 2 cores either way), alternating.
- sync: full-weight `update_weights` to a 1-actor pool over each transport (object store,
  gloo broadcast), alternating; the first sync of each (group build, first publish) is a
  warm-up.

`python -m benchmarks.pools --spec spec.json --result out.json`.
"""

from __future__ import annotations

import time

from benchmarks.settings import THREADS, Workload, run_spec


def run(spec: dict) -> dict:
    """Scaling and sync timings; `spec['warmup']` + `spec['reps']` alternations each."""
    import torch

    from ray_rlhf.config import ResourcesConfig, RolloutConfig
    from ray_rlhf.distributed.rollout_pool import RolloutPool
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.models.builders import load_policy

    w = Workload(**{k: v for k, v in spec["workload"].items() if k != "completions"})
    torch.set_num_threads(THREADS)
    started = init_ray(ResourcesConfig(num_cpus=2 * THREADS + 2))
    model_dir = spec["model_dir"]
    prompts = spec["prompts"][: w.prompts]
    ids = [str(i) for i in range(len(prompts))]
    max_len = w.max_prompt_tokens + w.tokens + 2
    pools: dict[str, RolloutPool] = {}

    def pool(name: str, actors: int, threads: int, transport: str) -> None:
        cfg = RolloutConfig(
            num_actors=actors,
            cpus_per_actor=threads,
            n_samples=w.n,
            kv_cache_mib=w.kv_cache_mib,
            ignore_eos=True,
        )
        pools[name] = RolloutPool(model_dir, cfg, max_model_len=max_len, transport=transport)

    try:
        pool("1x2", 1, THREADS, "object_store")
        pool("2x1", 2, THREADS // 2, "object_store")
        pool("broadcast", 1, THREADS, "broadcast")
        gen: dict[str, list[float]] = {"1x2": [], "2x1": []}
        tokens = 0
        for rep in range(spec["warmup"] + spec["reps"]):
            for name in gen:
                t0 = time.perf_counter()
                batch = pools[name].generate(
                    ids, prompts, n_samples=w.n, max_tokens=w.tokens, temperature=1.0,
                    top_p=1.0, seed=rep,
                )  # fmt: skip
                if rep >= spec["warmup"]:
                    gen[name].append(time.perf_counter() - t0)
                tokens = int(batch.response_mask.sum())
        state = load_policy(model_dir).state_dict()
        sync: dict[str, list[dict]] = {"object_store": [], "broadcast": []}
        for rep in range(spec["warmup"] + spec["reps"]):
            for name, key in (("object_store", "1x2"), ("broadcast", "broadcast")):
                t0 = time.perf_counter()
                metrics = pools[key].update_weights(state, rep + 1)
                metrics["wall"] = time.perf_counter() - t0
                if rep >= spec["warmup"]:
                    sync[name].append(metrics)
    finally:
        for p in pools.values():
            p.shutdown()
        shutdown_ray(started)
    return {"generate": gen, "tokens_per_generate": tokens, "sync": sync}


def main() -> None:
    run_spec(run, __doc__)


if __name__ == "__main__":
    main()
