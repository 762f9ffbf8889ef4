"""Seconds per reward-model step with each Secrets-of-RLHF-II option (contrastive term, MetaRM)
against plain BT: `RMLearner.train_step` on the toy world's pairs, world size 1 (ZeRO-0, the
default with one learner; `--set learner.zero_stage=2` for ZeRO-2), one thread, the same batches
for every variant. Prints one JSON line per variant (median s/step after 2 warm-up steps, and
the first / last metrics).

`python -m benchmarks.rm_methods_cost --out runs/rm_cost --steps 40`; the testbed's model
and batch: `--pairs 64 --set model.tiny.hidden_size=128 --set model.tiny.num_layers=4
--set model.tiny.num_heads=4 --set model.tiny.intermediate_size=512`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

VARIANTS = {
    "plain": [],
    "simcse": ["rm.contrastive.kind=simcse"],
    "simcse shared": ["rm.contrastive.kind=simcse", "rm.contrastive.views=shared"],
    "simcse differences": ["rm.contrastive.kind=simcse", "rm.contrastive.target=differences"],
    "swav": ["rm.contrastive.kind=swav"],
    "swav shared": ["rm.contrastive.kind=swav", "rm.contrastive.views=shared"],
    "swav differences": ["rm.contrastive.kind=swav", "rm.contrastive.target=differences"],
    "metarm": ["rm.meta.enabled=true"],
}


def write_meta_responses(cfg, path: Path, prompts: int = 200, k: int = 4) -> Path:
    """Toy-world train prompts with k noisy solver responses each (stand-ins for policy
    samples)."""
    from ray_rlhf.data.toyworld import build_splits
    from ray_rlhf.data.toyworld.splits import noisy_solver_response
    from ray_rlhf.data.toyworld.tasks import parse_prompt

    rng = random.Random(0)
    texts = sorted(set(build_splits(cfg.data.toyworld).pref_train["prompt"]))[:prompts]
    with path.open("w") as f:
        for text in texts:
            task = parse_prompt(text)
            responses = [noisy_solver_response(rng, task, cfg.data.toyworld) for _ in range(k)]
            f.write(json.dumps({"prompt": text, "responses": responses}) + "\n")
    return path


def main() -> None:
    import torch

    from ray_rlhf.config import load_config
    from ray_rlhf.data.sampler import global_batch_indices
    from ray_rlhf.learner.rm import RMLearner, meta_batch, pair_batch
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.rm import load_meta_tensors, load_rm_tensors
    from ray_rlhf.loops.rm_local import ensure_process_group

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/rm_cost")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--pairs", type=int, default=32, help="pairs per step")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. model.tiny.num_layers=4"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = args.pairs
    base = [f"run.output_dir={args.out}", "run.name=rm_cost", "learner.num_workers=1"]
    base += [f"rm.batch_size={pairs}", "rm.lr=0.003", "data.toyworld.n_sft=100"]
    base += ["data.max_prompt_tokens=32", "data.max_response_tokens=16", *args.set]  # the toy's
    cfg = load_config(None, base)
    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_base_model(cfg, run_dir)
    train, _ = load_rm_tensors(cfg, run_dir, model_dir)
    meta_path = write_meta_responses(cfg, run_dir / "meta.jsonl")
    ensure_process_group()
    for name in args.variants.split(","):
        vcfg = load_config(None, [*base, *VARIANTS[name], f"data.meta_responses_path={meta_path}"])
        torch.manual_seed(0)
        learner = RMLearner(
            model_dir, vcfg.model, vcfg.learner, vcfg.rm, micro_batch_per_worker=pairs, seed=0
        )
        meta = load_meta_tensors(vcfg, model_dir)
        times, rows = [], []
        for step in range(args.steps):
            idx = global_batch_indices(train["chosen_input_ids"].shape[0], pairs, step, 0)
            meta_rows = None
            if meta is not None:
                k, size = vcfg.rm.meta.k, vcfg.rm.meta.batch_size
                prompts = global_batch_indices(meta["input_ids"].shape[0] // k, size, step, 0)
                meta_rows = meta_batch(meta, prompts, k)
            start = time.perf_counter()
            rows.append(learner.train_step(pair_batch(train, idx), meta_rows))
            times.append(time.perf_counter() - start)
        keys = sorted(k for k in rows[-1] if k.startswith("rm/") and k != "rm/lr")
        print(
            json.dumps(
                {
                    "variant": name,
                    "s_per_step": round(statistics.median(times[2:]), 4),
                    "first": {k: round(rows[0][k], 4) for k in keys},
                    "last": {k: round(rows[-1][k], 4) for k in keys},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
