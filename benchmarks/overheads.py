"""Each learner-side overhead change measured on its own, before / after, in one process.

On one PPO learner (world size 1, ZeRO-0, the SmolLM2 example's shape by default: 8
chat-templated prompts x 4 samples x 32 response tokens), alternating the two variants of
each change `--reps` times and taking medians:

- `old_logprob_pass`: an iteration (`make_experience` + `train`) with the separate
  old-policy forward (before) vs taking the training forward's detached logprobs (after;
  what one epoch of one minibatch does);
- `state_dict`: reading the weights for a sync with a clone of every tensor (before) vs the
  module's own CPU tensors (after, below ZeRO-3);
- `param_norm`: `train/param_norm` through a float64 copy of every tensor (before) vs
  float64 norms of 1M-element chunks (after);
- `backward_allreduce`: an iteration with DeepSpeed's gradient all-reduce at the
  accumulation boundary (before; with one worker it flattens, "reduces" over a group of one
  and copies back every gradient) vs without it (after: `enable_backward_allreduce` off);
- `publish_fetch`: the object-store weight sync's pack + put + get + unpack with the tied
  `lm_head.weight` as a second copy (before) vs sent once and re-tied (after); the engine
  reload in the rollout actor is not included.

Prints one JSON line (seconds, bytes, ratios before / after).

`python -m benchmarks.overheads runs/examples/smollm2/model --prompts
runs/examples/smollm2/prompts.jsonl`
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

from benchmarks.learner_memory import _prompt_token_ids, _scored_batch, add_shape_arguments


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(before: Callable, after: Callable, reps: int) -> dict:
    """Medians of `reps` alternating runs of each (before first in even reps)."""
    times: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(reps):
        order = [("before", before), ("after", after)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(_timed(fn))
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    return {"before_s": round(b, 4), "after_s": round(a, 4), "ratio": round(b / a, 3),
            "runs": times}  # fmt: skip


def _old_param_norm(state: dict) -> float:
    return float(sum((t.double() ** 2).sum() for t in state.values()) ** 0.5)


def _learner(model_dir: str, args: argparse.Namespace):
    from ray_rlhf.config import load_config
    from ray_rlhf.learner.ppo import PPOLearner

    rows = args.num_prompts * args.n_samples
    cfg = load_config(
        None,
        [
            f"run.output_dir={tempfile.mkdtemp(prefix='overheads_')}",
            "learner.num_workers=1",
            f"ppo.prompts_per_iteration={args.num_prompts}",
            f"rollout.n_samples={args.n_samples}",
            f"data.max_response_tokens={args.response_tokens}",
            f"ppo.minibatch_size={rows}",
            f"ppo.micro_batch_size={args.micro_batch_size}",
        ],
    )
    return PPOLearner(model_dir, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()

    import torch

    from ray_rlhf.config import ResourcesConfig
    from ray_rlhf.distributed.ppo_trainer import _param_norm
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.distributed.weight_sync import ObjectStoreTransport, tied_names
    from ray_rlhf.loops.rm_local import ensure_process_group

    torch.set_num_threads(2)
    ensure_process_group()
    learner = _learner(args.model_dir, args)
    assert learner.old_logprobs_from_training, "one epoch of one minibatch expected"
    prompts = _prompt_token_ids(args.model_dir, args.prompts, args.num_prompts)
    scored = _scored_batch(
        prompts, args.n_samples, args.response_tokens, learner.reference.config.vocab_size
    )
    seed = iter(range(10**6))

    def iteration(separate_pass: bool) -> Callable[[], None]:
        def run() -> None:
            learner.old_logprobs_from_training = not separate_pass
            exp, _ = learner.make_experience(scored)
            learner.train(exp, seed=next(seed))

        return run

    def allreduce(on: bool) -> Callable[[], None]:
        def run() -> None:
            learner.policy.enable_backward_allreduce = on
            iteration(False)()

        return run

    out: dict = {"model_dir": args.model_dir, "rows": args.num_prompts * args.n_samples}
    allreduce_default = learner.policy.enable_backward_allreduce
    iteration(True)()  # warm-up (allocator, first optimizer step)
    out["old_logprob_pass"] = _alternate(iteration(True), iteration(False), args.reps)
    out["backward_allreduce"] = _alternate(allreduce(True), allreduce(False), args.reps) | {
        "default": allreduce_default
    }
    learner.policy.enable_backward_allreduce = allreduce_default
    phases: dict[str, list[float]] = {"make_experience": [], "train": []}
    for _ in range(args.reps):
        t0 = time.perf_counter()
        exp, _ = learner.make_experience(scored)
        t1 = time.perf_counter()
        learner.train(exp, seed=next(seed))
        phases["make_experience"].append(t1 - t0)
        phases["train"].append(time.perf_counter() - t1)
    out["phases_s"] = {k: round(statistics.median(v), 4) for k, v in phases.items()}

    state = learner.policy_state_dict()
    out["state_dict"] = _alternate(
        lambda: {k: v.detach().clone() for k, v in learner.policy_state_dict().items()},
        learner.policy_state_dict,
        args.reps,
    )
    norms = (_old_param_norm(state), _param_norm(state))
    out["param_norm"] = _alternate(lambda: _old_param_norm(state), lambda: _param_norm(state),
                                   args.reps) | {"values": norms}  # fmt: skip

    started = init_ray(ResourcesConfig(), min_cpus=1)
    try:
        transport = ObjectStoreTransport()
        copied = {k: (v.clone() if k in tied_names(state) else v) for k, v in state.items()}

        def sync(s: dict) -> Callable[[], None]:
            return lambda: ObjectStoreTransport.fetch(transport.publish(s, 1))

        out["publish_fetch"] = _alternate(sync(copied), sync(state), args.reps) | {
            "bytes_before": transport.publish(copied, 1).num_bytes,
            "bytes_after": transport.publish(state, 1).num_bytes,
            "tied": tied_names(state),
        }
    finally:
        shutdown_ray(started)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
