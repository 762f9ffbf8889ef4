"""Where a learner step's time goes: forward / backward / optimizer step of one batch, in plain
torch and in the DeepSpeed engine ray_rlhf's learners use (ZeRO stages 0 and 2, world 1),
alternating, same threads. Used to explain the train phase's distance from the floor.

`python -m benchmarks.profile_learner MODEL_DIR --rows 16 --length 48 --reps 3`
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from benchmarks.settings import THREADS
    from ray_rlhf.config import LearnerConfig
    from ray_rlhf.learner.engine import init_engine
    from ray_rlhf.loops.rm_local import ensure_process_group
    from ray_rlhf.models.builders import load_policy

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stages", default="plain,0,2")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    ensure_process_group()
    ids = torch.randint(0, 1000, (args.rows, args.length))
    systems = {}
    for name in args.stages.split(","):
        model = load_policy(args.model_dir).train()
        if name == "plain":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

            def backward(loss, opt=opt):  # noqa: ANN001
                loss.backward()

            def step(model=model, opt=opt) -> None:  # noqa: ANN001
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            systems[name] = (model, backward, step)
        else:
            cfg = LearnerConfig(num_workers=1, cpus_per_worker=THREADS, zero_stage=int(name))
            engine = init_engine(
                model, cfg, lr=1e-4, weight_decay=0.0, total_steps=1, warmup_steps=0,
                micro_batch_per_worker=args.rows, lr_floor=1.0,
            )  # fmt: skip
            systems[f"zero{name}"] = (engine, engine.backward, engine.step)
    times = {k: {"forward": [], "backward": [], "step": []} for k in systems}
    for rep in range(args.reps + 1):
        for name, (model, backward, step) in systems.items():
            t0 = time.perf_counter()
            loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
            t1 = time.perf_counter()
            backward(loss)
            t2 = time.perf_counter()
            step()
            t3 = time.perf_counter()
            if rep:
                for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2)):
                    times[name][k].append(v)
    for name, parts in times.items():
        med = {k: statistics.median(v) for k, v in parts.items()}
        total = sum(med.values())
        print(
            f"{name:6s} "
            + "  ".join(f"{k} {v:.3f}" for k, v in med.items())
            + f"  total {total:.3f}"
        )


if __name__ == "__main__":
    main()
