"""Peak resident memory of PPO learner iterations, in-process (world size 1, ZeRO-0).

Builds `PPOLearner` on a model directory and runs `make_experience` + `train` on a
synthetic `ScoredBatch` shaped like the SmolLM2 example's iterations (examples/smollm2):
8 chat-templated prompts x 4 samples x 32 random response tokens, micro-batches of 4, one
optimizer step per iteration (`--iterations`, default 1). Prints, as one JSON line, the RSS
after building the learner, each iteration's peak RSS (sampled every 5 ms), the process's
peak RSS (`ru_maxrss`) after the iterations, and the RSS holding `policy_state_dict` (what
a weight sync reads). One measurement per fresh process: the peak never goes down.

`python benchmarks/learner_memory.py runs/examples/smollm2/model \\
    --prompts runs/examples/smollm2/prompts.jsonl`

To measure other code with the same script, put its `ray_rlhf` first on PYTHONPATH and run
the script by path (e.g. `git archive <commit> ray_rlhf | tar -x -C /tmp/base` and
`PYTHONPATH=/tmp/base python benchmarks/learner_memory.py ...` from outside the checkout).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Sampler(threading.Thread):
    """Largest RSS seen every 5 ms while running (the iteration's own peak, which
    `ru_maxrss` hides when loading the models peaked higher)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _rss_mib())


def _prompt_token_ids(model_dir: str, prompts_path: str | None, count: int) -> list[list[int]]:
    """Token ids of the first `count` prompts (chat-templated), or of a fixed toy prompt."""
    from ray_rlhf.models.builders import load_tokenizer

    tok = load_tokenizer(model_dir)
    if prompts_path is None:
        return [tok("Say something polite about the weather.")["input_ids"]] * count
    rows = [json.loads(line) for line in Path(prompts_path).read_text().splitlines()[:count]]
    texts = [
        tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
        for r in rows
    ]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _scored_batch(prompts: list[list[int]], n: int, tokens: int, vocab: int):
    """(P * n) right-padded rows: each prompt followed by `tokens` random response ids."""
    import torch

    from ray_rlhf import algo
    from ray_rlhf.types import RolloutBatch, ScoredBatch

    gen = torch.Generator().manual_seed(0)
    rows = [(p, torch.randint(4, vocab, (tokens,), generator=gen).tolist()) for p in prompts
            for _ in range(n)]  # fmt: skip
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.bool)
    resp = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = True
        resp[i, len(p) : len(p) + len(r)] = True
    batch = RolloutBatch(
        prompt_ids=[str(i) for i in range(len(prompts))],
        prompts=["" for _ in prompts],
        responses=["" for _ in rows],
        input_ids=ids,
        attention_mask=attn,
        response_mask=resp,
        sample_logprobs=-torch.rand(len(rows), width, generator=gen) * resp,
        finished=torch.ones(len(rows), dtype=torch.bool),
        n_samples=n,
    )
    scores = torch.randn(len(rows), generator=gen)
    return ScoredBatch(batch, scores, algo.place_last_token_rewards(scores, resp))


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The model dir and the batch shape (the SmolLM2 example's by default)."""
    parser.add_argument("model_dir")
    parser.add_argument("--prompts", help="prompts.jsonl with `messages` rows")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_shape_arguments(parser)
    parser.add_argument("--advantage", default="rloo")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--iterations", type=int, default=1,
        help="iterations on the same batch; from the 2nd, Adam's states exist during backward",
    )  # fmt: skip
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="more config overrides, e.g. learner.gradient_checkpointing=true",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from ray_rlhf.config import load_config
    from ray_rlhf.learner.ppo import PPOLearner
    from ray_rlhf.loops.rm_local import ensure_process_group

    torch.set_num_threads(2)
    ensure_process_group()
    rows = args.num_prompts * args.n_samples
    cfg = load_config(
        None,
        [
            f"run.output_dir={tempfile.mkdtemp(prefix='learner_memory_')}",
            "learner.num_workers=1",
            "learner.zero_stage=0",
            f"model.dtype={args.dtype}",
            f"ppo.advantage={args.advantage}",
            f"ppo.prompts_per_iteration={args.num_prompts}",
            f"rollout.n_samples={args.n_samples}",
            f"data.max_response_tokens={args.response_tokens}",
            f"ppo.minibatch_size={rows}",
            f"ppo.micro_batch_size={args.micro_batch_size}",
            *args.set,
        ],
    )
    prompts = _prompt_token_ids(args.model_dir, args.prompts, args.num_prompts)
    t0 = time.perf_counter()
    learner = PPOLearner(args.model_dir, cfg)
    vocab = learner.reference.config.vocab_size
    scored = _scored_batch(prompts, args.n_samples, args.response_tokens, vocab)
    rss_init, peak_init = _rss_mib(), _peak_mib()
    sampled = []
    t1 = time.perf_counter()
    for it in range(args.iterations):
        sampler = _Sampler()
        sampler.start()
        exp, _ = learner.make_experience(scored)
        stats = learner.train(exp, seed=it)
        del exp
        sampled.append(round(sampler.stop(), 1))
    t2 = time.perf_counter()
    rss_iter, peak_iter = _rss_mib(), _peak_mib()
    state = learner.policy_state_dict()
    out = {
        "rows": rows,
        "width": int(scored.rollout.input_ids.shape[1]),
        "rss_after_init_mib": round(rss_init, 1),
        "peak_after_init_mib": round(peak_init, 1),
        "rss_after_iteration_mib": round(rss_iter, 1),
        "peak_after_iteration_mib": round(peak_iter, 1),
        "sampled_iteration_peaks_mib": sampled,
        "rss_with_state_dict_mib": round(_rss_mib(), 1),
        "peak_rss_mib": round(_peak_mib(), 1),
        "state_dict_tensors": len(state),
        "init_s": round(t1 - t0, 1),
        "iteration_s": round(t2 - t1, 1),
        "iterations": args.iterations,
        "overrides": args.set,
        "optimizer_steps_last": stats["train/optimizer_steps"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
