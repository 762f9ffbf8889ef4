"""The compute floor of one ray_rlhf iteration, in one plain process with the same threads.

- train: one forward + backward + AdamW step of the policy on a batch of the iteration's
  shape (N rows, all at once, grad-norm clip), in plain torch, timed first;
- generate: an in-process vLLM engine (`ray_rlhf.rollout.engine`) sampling exactly the
  iteration's completions (same prompts, n, tokens with EOS ignored, seeds);
- reference: the frozen reference's forward on the batch (the KL term needs it; reported
  beside the floor, not in it).

`python -m benchmarks.floor --spec spec.json --result out.json` (project venv).
"""

from __future__ import annotations

import time

from benchmarks.settings import THREADS, Workload, run_spec


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(spec: dict) -> dict:
    """`spec['warmup']` (at least 1) untimed then `spec['reps']` timed repetitions of each part."""
    import torch

    from ray_rlhf.algo.tokens import token_logprobs
    from ray_rlhf.models.builders import load_policy, load_tokenizer
    from ray_rlhf.rollout.engine import Completion, create_engine, generate, shutdown_engine
    from ray_rlhf.rollout.worker import build_rollout_batch

    w = Workload(**{k: v for k, v in spec["workload"].items() if k != "completions"})
    torch.set_num_threads(THREADS)
    model_dir = spec["model_dir"]
    tokenizer = load_tokenizer(model_dir)
    prompts = spec["prompts"][: w.prompts]
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    policy = load_policy(model_dir).train()
    reference = load_policy(model_dir).eval().requires_grad_(False)
    optim = torch.optim.AdamW(policy.parameters(), lr=w.lr, betas=(0.9, 0.95), weight_decay=0.0)
    # The batch has the iteration's exact shape: each prompt n times + `tokens` response
    # tokens (their values do not change the cost). Training is timed before the vLLM engine
    # exists: in-process vLLM init (NUMA membind, OpenMP thread binding) made later torch
    # training in the same process 2-3x slower (6.6-9.5 s vs 3.2 s at 135M).
    gen_rng = torch.Generator().manual_seed(0)
    groups = [
        [
            Completion(
                tuple(torch.randint(0, len(tokenizer), (w.tokens,), generator=gen_rng).tolist()),
                (0.0,) * w.tokens,
                False,
            )
            for _ in range(w.n)
        ]
        for _ in prompts
    ]
    rb = build_rollout_batch(
        [str(i) for i in range(len(prompts))],
        prompts,
        prompt_ids,
        groups,
        n_samples=w.n,
        responses=[""] * (len(prompts) * w.n),
        pad_token_id=tokenizer.pad_token_id or 0,
        policy_version=0,
    )
    ids, attn, mask = rb.input_ids, rb.attention_mask.long(), rb.response_mask.float()

    def train_step() -> None:
        logits = policy(input_ids=ids, attention_mask=attn).logits
        lp = token_logprobs(logits, ids)  # (N, T)
        loss = -(lp * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)

    @torch.no_grad()
    def ref_forward() -> None:
        reference(input_ids=ids, attention_mask=attn)

    warmup = max(spec["warmup"], 1)  # first calls pay lazy setup (vLLM: ~2 s)
    times: dict[str, list[float]] = {"generate": [], "train": [], "reference": []}
    for rep in range(warmup + spec["reps"]):
        t_train, t_ref = _timed(train_step), _timed(ref_forward)
        if rep >= warmup:
            times["train"].append(t_train)
            times["reference"].append(t_ref)

    llm = create_engine(
        model_dir,
        kv_cache_mib=w.kv_cache_mib,
        max_model_len=w.max_prompt_tokens + w.tokens + 2,
        threads=THREADS,
    )

    def gen() -> None:
        groups[:] = generate(llm, prompt_ids, n=w.n, max_tokens=w.tokens, seed=0, ignore_eos=True)

    for rep in range(warmup + spec["reps"]):
        t_gen = _timed(gen)
        if rep >= warmup:
            times["generate"].append(t_gen)
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    shutdown_engine(llm)
    return {
        "times": times,
        "generated_tokens": tokens,
        "batch_shape": list(ids.shape),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    run_spec(run, __doc__)


if __name__ == "__main__":
    main()
