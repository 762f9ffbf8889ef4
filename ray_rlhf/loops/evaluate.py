"""Held-out evaluation of a policy dir on toy-world prompts with a vLLM engine."""

from __future__ import annotations

from pathlib import Path

from ray_rlhf.config import RLHFConfig
from ray_rlhf.config_ppo import EVAL_SAMPLED_TEMPERATURE


def evaluate_policy(
    model_dir: str | Path, prompts: list[str], cfg: RLHFConfig, *, seed: int = 0
) -> dict[str, float]:
    """Greedy and sampled true reward of `model_dir` on `prompts` (toy-world ground truth);
    sampled at `EVAL_SAMPLED_TEMPERATURE`, as the PPO trainer's periodic evaluation.

    Returns:
        `eval/greedy/<metric>` and `eval/sampled/<metric>` for every metric of
        `toyworld.evaluate_responses` (true_reward, exact_match, style_rate, per domain).
    """
    from ray_rlhf.data.limits import max_sequence_tokens
    from ray_rlhf.data.toyworld import evaluate_responses
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.rollout.engine import create_engine, generate, shutdown_engine

    tokenizer = load_tokenizer(model_dir, trust_remote_code=cfg.model.trust_remote_code)
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    llm = create_engine(
        model_dir,
        dtype=cfg.model.dtype,
        seed=seed,
        kv_cache_mib=cfg.rollout.kv_cache_mib,
        enforce_eager=cfg.rollout.enforce_eager,
        max_model_len=max_sequence_tokens(cfg.data),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    try:
        max_tokens = cfg.data.max_response_tokens
        greedy = generate(llm, prompt_ids, n=1, temperature=0.0, max_tokens=max_tokens)
        sampled = generate(
            llm,
            prompt_ids,
            n=cfg.rollout.n_samples,
            temperature=EVAL_SAMPLED_TEMPERATURE,
            top_p=1.0,
            max_tokens=max_tokens,
            seed=seed,
        )
    finally:
        shutdown_engine(llm)
    metrics: dict[str, float] = {}
    for mode, outputs in (("greedy", greedy), ("sampled", sampled)):
        pairs = [(p, c) for p, group in zip(prompts, outputs, strict=True) for c in group]
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for _, c in pairs]
        scores = evaluate_responses([p for p, _ in pairs], texts)
        metrics.update({f"eval/{mode}/{k}": v for k, v in scores.items()})
    return metrics
