"""ray_rlhf's reward-model training step (`RMLearner`: DeepSpeed engine, Bradley-Terry loss)
on the toy preference pairs, in one process with the benchmark's threads.

This is the path of the in-process RM training (`ray_rlhf.loops.rm_local`, used by the
ensembles and evidence jobs); the Ray Train run (`ray-rlhf train-rm`) runs the same
`RMLearner.train_step` inside its workers. `python -m benchmarks.rm_side --spec s --result r`.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()


from benchmarks.settings import THREADS, Workload, run_spec  # noqa: E402


def run(spec: dict) -> dict:
    """`spec['iterations']` optimizer steps of `rm_pairs` pairs; wall-clock step stamps."""
    import torch

    from ray_rlhf.config import load_config
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.data.sampler import global_batch_indices
    from ray_rlhf.learner.rm import RMLearner, pair_batch
    from ray_rlhf.loops.rm import tokenize_pairs
    from ray_rlhf.loops.rm_local import ensure_process_group
    from ray_rlhf.models.builders import load_tokenizer

    w = Workload(**{k: v for k, v in spec["workload"].items() if k != "completions"})
    torch.set_num_threads(THREADS)
    overrides = [
        f"rm.lr={w.lr}",
        f"rm.batch_size={w.rm_pairs}",
        f"rm.steps={spec['iterations']}",
        "rm.warmup_steps=0",
        "learner.num_workers=1",
        "learner.grad_clip=1.0",
    ]
    if spec.get("zero_stage") is not None:
        overrides.append(f"learner.zero_stage={spec['zero_stage']}")
    cfg = load_config(None, overrides)
    tokenizer = load_tokenizer(spec["model_dir"])
    data = load_preferences(spec["pairs_path"], tokenizer=tokenizer, chat_template="never")
    pairs = tokenize_pairs(data, tokenizer, max_length=256)
    ensure_process_group()
    learner = RMLearner(
        spec["model_dir"], cfg.model, cfg.learner, cfg.rm, micro_batch_per_worker=w.rm_pairs
    )
    n = pairs["chosen_input_ids"].shape[0]
    begins, ends = [], []
    for step in range(spec["iterations"]):
        idx = global_batch_indices(n, w.rm_pairs, step, 0)
        begins.append(time.time())
        learner.train_step(pair_batch(pairs, idx))
        ends.append(time.time())
    return {"process_start": PROCESS_START, "step_begins": begins, "step_ends": ends}


def main() -> None:
    run_spec(run, __doc__)


if __name__ == "__main__":
    main()
