"""The automatic `ppo.micro_batch_size`: activation memory per row estimated from the model's
config and the run's token limits, and the largest micro-batch that fits 2 GiB."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from transformers import LlamaConfig

from ray_rlhf.config import load_config
from ray_rlhf.learner.ppo_batch import batch_plan, row_bytes
from ray_rlhf.loops.preflight import resolve_micro_batch
from ray_rlhf.models.memory import (
    ACTIVATION_BUDGET_BYTES,
    activation_bytes_per_row,
    auto_micro_batch,
)

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
           "max_position_embeddings": 8192}  # fmt: skip


def test_activation_bytes_by_hand():
    config = SimpleNamespace(hidden_size=4, num_hidden_layers=2, intermediate_size=8,
                             vocab_size=10)  # fmt: skip
    # per token and layer 10*4 + 4*8 = 72 values, 2 layers; 3 x 10 per response token
    assert activation_bytes_per_row(config, 5, 3, 4) == (5 * 2 * 72 + 3 * 30) * 4
    assert activation_bytes_per_row(config, 5, 3, 2) == (5 * 2 * 72 + 3 * 30) * 2
    # checkpointed: 2 layer inputs of 4 values + one layer's 72, per token
    assert (
        activation_bytes_per_row(config, 5, 3, 4, checkpointed=True)
        == (5 * (2 * 4 + 72) + 3 * 30) * 4
    )
    no_mlp = SimpleNamespace(hidden_size=4, num_hidden_layers=1, vocab_size=10)
    assert activation_bytes_per_row(no_mlp, 1, 0, 1) == 10 * 4 + 4 * 16  # MLP 4 x hidden


def test_smollm2_estimate():
    """407 tokens with 256 response tokens: 30 x (5,760 + 6,144) values per token plus
    3 x 49,152 per response token, fp32: 0.68 GiB (0.58-0.65 measured)."""
    per_row = activation_bytes_per_row(SimpleNamespace(**SMOLLM2), 407, 256, 4)
    assert per_row == (407 * 30 * 11_904 + 256 * 3 * 49_152) * 4 == 732_386_304


@pytest.mark.parametrize(
    ("rows", "row_bytes", "expected"),
    [
        (32, 2**20, 32),  # small rows: capped at 32
        (64, 2**20, 32),
        (16, 2**20, 16),  # the whole share
        (32, 732_386_304, 2),  # SmolLM2, 407 tokens: 2.9 rows fit, 2 divides 32
        (32, 280_000_000, 4),  # 7 rows fit; 4 is the largest divisor of 32 up to 7
        (24, 280_000_000, 6),
        (12, 5 * 2**30, 1),  # not even one row fits: 1
        (7, 300_000_000, 7),
        (7, 400_000_000, 1),  # 5 fit, but only 1 and 7 divide 7
    ],
)
def test_auto_micro_batch(rows, row_bytes, expected):
    assert auto_micro_batch(rows, row_bytes) == expected
    assert ACTIVATION_BUDGET_BYTES == 2 * 2**30


def test_batch_plan_sizes_unset_micro_batches_from_row_bytes():
    cfg = load_config(None, ["data.max_prompt_tokens=151", "data.max_response_tokens=256"])
    assert cfg.ppo.micro_batch_size is None  # the default
    per_row = row_bytes(cfg, LlamaConfig(**SMOLLM2))
    assert per_row == 732_386_304
    plan = batch_plan(cfg, 2, per_row)  # 64 x 4 samples, minibatch 64: 32 rows per learner
    assert (plan.rows, plan.minibatch, plan.micro, plan.grad_accum) == (128, 32, 2, 16)
    given = load_config(None, ["ppo.micro_batch_size=8"])
    assert batch_plan(given, 2, per_row).micro == 8  # a set size is kept
    with pytest.raises(ValueError, match="micro_batch_size is unset"):
        batch_plan(cfg, 2)
    bf16 = load_config(None, ["data.max_prompt_tokens=151", "data.max_response_tokens=256",
                              "model.dtype=bfloat16"])  # fmt: skip
    assert row_bytes(bf16, LlamaConfig(**SMOLLM2)) == per_row // 2
    recompute = load_config(None, ["data.max_prompt_tokens=151", "data.max_response_tokens=256",
                                   "learner.gradient_checkpointing=true"])  # fmt: skip
    assert (
        row_bytes(recompute, LlamaConfig(**SMOLLM2))
        == (407 * (30 * 576 + 11_904) + 256 * 147_456) * 4
    )
    # Unresolved limits: the model's whole context, prompt and response.
    unset = load_config(None, [])
    assert row_bytes(unset, LlamaConfig(**SMOLLM2)) == (8192 * 30 * 11_904 + 8192 * 147_456) * 4


def test_preflight_resolution_is_logged_and_stored():
    model = LlamaConfig(**SMOLLM2)
    overrides = ["data.max_prompt_tokens=151", "data.max_response_tokens=32"]
    resolved, line = resolve_micro_batch(load_config(None, overrides), model)
    # (183 x 357,120 + 32 x 147,456) x 4 bytes = 0.26 GiB per row: 7 fit, 4 divides 32
    assert resolved.ppo.micro_batch_size == 4
    assert line == (
        "ppo.micro_batch_size 4 rows per forward (unset: about 0.26 GiB of activations per "
        "row of 183 tokens, at most 2 GiB per forward, dividing a learner's 32-row minibatch "
        "share)"
    )
    given = load_config(None, [*overrides, "ppo.micro_batch_size=16"])
    kept, line = resolve_micro_batch(given, model)
    assert kept is given
    assert line == (
        "ppo.micro_batch_size 16 (set in the config; about 0.26 GiB of activations per row "
        "of 183 tokens)"
    )


def test_preflight_keeps_the_tiny_models_32(tmp_path: Path):
    """The toy world's tiny model: small rows, so the old default of 32 comes out."""
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    resolved = preflight(cfg, prepare_run_dir(cfg), ("ppo",))
    assert resolved.ppo.micro_batch_size == 32
    saved = yaml.safe_load((cfg.run.run_dir / "config.yaml").read_text())
    assert saved["ppo"]["micro_batch_size"] == 32


def test_batches_whose_activations_exceed_the_machine_are_refused():
    from ray_rlhf.config import ConfigError
    from ray_rlhf.loops.preflight import check_learner_memory

    smol = LlamaConfig(**SMOLLM2)
    limits = ["data.max_prompt_tokens=151", "data.max_response_tokens=256"]
    gib24 = 24 * 2**30
    # SFT: 64 / 2 learners = 32 rows of 407 tokens, logits over all of them:
    # (407 x 357,120 + 407 x 147,456) x 4 bytes = 0.76 GiB a row, 49 GiB for both learners.
    cfg = load_config(None, limits)
    with pytest.raises(ConfigError) as caught:
        check_learner_memory(cfg, smol, ("sft",), gib24)
    assert str(caught.value) == (
        "sft.batch_size: 64 means 32 rows of 407 tokens per training forward on each of the 2 "
        "learners, about 49 GiB of activations in all (estimated), more than this machine's "
        "24 GiB; set sft.batch_size=14 or lower, or learner.gradient_checkpointing=true"
    )
    # RM: 2 x 32 rows, no LM head: 0.54 GiB a row, 69 GiB in all.
    with pytest.raises(ConfigError, match=r"^rm\.batch_size: 64 means 64 rows .* about 69 GiB "
                       r".* set rm\.batch_size=10 or lower"):  # fmt: skip
        check_learner_memory(cfg, smol, ("rm",), gib24)
    # PPO: a set micro-batch of 32 is refused, the automatic one (2) passes.
    big = load_config(None, [*limits, "ppo.micro_batch_size=32"])
    with pytest.raises(ConfigError, match=r"^ppo\.micro_batch_size: 32 .* set "
                       r"ppo\.micro_batch_size=8 or lower"):  # fmt: skip
        check_learner_memory(big, smol, ("ppo",), gib24)
    # 7 rows would fit; 4 is the largest that divides a learner's 16-row share.
    odd = load_config(None, [*limits, "ppo.micro_batch_size=32", "ppo.minibatch_size=32"])
    with pytest.raises(ConfigError, match=r"set ppo\.micro_batch_size=4 or lower"):
        check_learner_memory(odd, smol, ("ppo",), 20 * 2**30)
    auto = load_config(None, [*limits, "ppo.micro_batch_size=2"])
    check_learner_memory(auto, smol, ("ppo",), gib24)
    # With gradient checkpointing the SFT batch fits: 407 x (17,280 + 11,904 + 147,456) x 4.
    recompute = load_config(None, [*limits, "learner.gradient_checkpointing=true"])
    check_learner_memory(recompute, smol, ("sft", "rm"), gib24)
