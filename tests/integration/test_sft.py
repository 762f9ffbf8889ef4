"""SFT end to end: Ray Train with 2 DeepSpeed ZeRO-2 workers, HF export, vLLM generation."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, ray_session):
    from ray_rlhf.loops import sft

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=sft_it",
            "learner.num_workers=2",
            "learner.zero_stage=2",
            "sft.steps=60",
            "sft.batch_size=32",
            "sft.log_every=10",
            "sft.warmup_steps=10",
            "sft.checkpoint_every=30",
            "data.toyworld.n_sft=2000",
        ],
    )
    return cfg, sft.run_job(cfg)


def test_loss_decreases_and_metrics_are_written(sft_run):
    cfg, result = sft_run
    rows = read_metrics(cfg.run.run_dir / "sft")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    losses = [r["train/loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert all(r["perf/tokens_per_s"] > 0 for r in rows)
    assert (cfg.run.run_dir / "sft" / "tensorboard").is_dir()
    assert (cfg.run.run_dir / "DONE.json").is_file()


def test_exported_policy_differs_from_base_and_loads_in_transformers(sft_run):
    from transformers import AutoModelForCausalLM

    _, result = sft_run
    trained = AutoModelForCausalLM.from_pretrained(result.policy_dir)
    base = AutoModelForCausalLM.from_pretrained(result.base_dir)
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    ]
    assert min(diffs) > 0, "every parameter tensor should have been updated"
    assert all(torch.isfinite(p).all() for p in trained.parameters())


def test_exported_policy_generates_in_vllm(sft_run):
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.rollout.engine import create_engine, generate, shutdown_engine

    _, result = sft_run
    tokenizer = load_tokenizer(result.policy_dir)
    llm = create_engine(result.policy_dir, kv_cache_mib=16, max_model_len=64, threads=1)
    try:
        prompts = ["sort 3 1 2 =", "rev 4 5 6 7 ="]
        out = generate(llm, [tokenizer(p)["input_ids"] for p in prompts], n=2, max_tokens=9, seed=0)
    finally:
        shutdown_engine(llm)
    assert [len(group) for group in out] == [2, 2]
    for group in out:
        for completion in group:
            assert len(completion.token_ids) > 0
            assert len(completion.logprobs) == len(completion.token_ids)
            assert all(lp <= 0 for lp in completion.logprobs)
    text = tokenizer.decode(out[0][0].token_ids, skip_special_tokens=True)
    assert all(word in tokenizer.get_vocab() for word in text.split())


def test_finished_run_dir_is_not_overwritten(sft_run):
    from ray_rlhf.config import ConfigError
    from ray_rlhf.loops.common import prepare_run_dir

    cfg, _ = sft_run
    with pytest.raises(ConfigError, match="holds a finished run"):
        prepare_run_dir(cfg)
