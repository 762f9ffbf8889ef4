"""Unset learning rates come from the size of the model a run starts from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ray_rlhf.config import load_config
from ray_rlhf.learning_rates import (
    PRETRAINED,
    PRETRAINED_FROM,
    SMALL,
    default_lr,
    lr_for,
    resolve_learning_rates,
)
from ray_rlhf.loops.common import prepare_run_dir
from ray_rlhf.loops.preflight import preflight
from ray_rlhf.models import TinyModelSpec, build_word_tokenizer, write_tiny_model


@pytest.mark.parametrize(
    ("parameters", "table"),
    [(200_000, SMALL), (PRETRAINED_FROM - 1, SMALL), (PRETRAINED_FROM, PRETRAINED),
     (135_000_000, PRETRAINED)],
)
def test_the_size_picks_the_table(parameters, table):
    for key in ("sft.lr", "rm.lr", "ppo.lr", "ppo.critic_lr"):
        assert default_lr(key, parameters) == table[key]


def test_pretrained_rates_are_the_usual_full_fine_tuning_ones():
    assert PRETRAINED == {"sft.lr": 5e-6, "rm.lr": 9e-6, "ppo.lr": 1e-6, "ppo.critic_lr": 9e-6}
    assert SMALL == {"sft.lr": 3e-3, "rm.lr": 1e-3, "ppo.lr": 1e-4, "ppo.critic_lr": 5e-4}


def test_set_rates_are_kept_and_unset_ones_filled_in():
    cfg = load_config(None, ["ppo.lr=3e-5", "rm.lr=2e-5"])
    assert (cfg.sft.lr, cfg.ppo.critic_lr) == (None, None)
    resolved, line = resolve_learning_rates(cfg, 135_000_000)
    assert (resolved.ppo.lr, resolved.rm.lr) == (3e-5, 2e-5)
    assert (resolved.sft.lr, resolved.ppo.critic_lr) == (5e-6, 9e-6)
    assert line == (
        "sft.lr 5e-06, rm.lr 2e-05, ppo.lr 3e-05, ppo.critic_lr 9e-06 (sft.lr, "
        "ppo.critic_lr: the pretrained-model defaults for 135.0M parameters; rm.lr, ppo.lr: "
        "set in the config)"
    )
    _, line = resolve_learning_rates(cfg, 135_000_000, shown=["rm.lr", "ppo.critic_lr"])
    assert line == (
        "rm.lr 2e-05, ppo.critic_lr 9e-06 (ppo.critic_lr: the pretrained-model defaults for "
        "135.0M parameters; rm.lr: set in the config)"
    )
    small, line = resolve_learning_rates(load_config(None, []), 200_000)
    assert (small.sft.lr, small.rm.lr, small.ppo.lr, small.ppo.critic_lr) == (
        3e-3, 1e-3, 1e-4, 5e-4
    )
    assert line.endswith("(sft.lr, rm.lr, ppo.lr, ppo.critic_lr: the small-model defaults "
                         "for 0.2M parameters)")


def test_a_learner_without_preflight_sizes_the_rate_from_its_model():
    small = torch.nn.Linear(10, 10)
    assert lr_for(None, "ppo.lr", small) == 1e-4
    assert lr_for(2e-5, "ppo.lr", small) == 2e-5
    big = torch.nn.Embedding(PRETRAINED_FROM, 1)
    assert lr_for(None, "ppo.lr", big) == 1e-6


def _model_dir(root: Path, spec: TinyModelSpec) -> Path:
    tokenizer = build_word_tokenizer(["sort", "1", "2", "3", "="])
    return write_tiny_model(root / "model", tokenizer, spec)


def _rates(cfg) -> tuple[float, ...]:
    return (cfg.sft.lr, cfg.rm.lr, cfg.ppo.lr, cfg.ppo.critic_lr)


def test_preflight_gives_a_pretrained_size_model_the_pretrained_rates(tmp_path, caplog):
    """A 25M-parameter model dir: the stored config holds the pretrained rates, and the
    run's log says why; an explicit rate stays."""
    spec = TinyModelSpec(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048)
    model = _model_dir(tmp_path, spec)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"id": "{i}", "prompt": "sort 3 1 ="}}\n' for i in range(4)))
    cfg = load_config(
        None,
        [f"run.output_dir={tmp_path / 'runs'}", f"model.path={model}",
         f"data.prompts_path={prompts}", f"data.eval_prompts_path={prompts}", "rm.lr=4e-5"],
    )
    run_dir = prepare_run_dir(cfg)
    with caplog.at_level("INFO", logger="ray_rlhf.loops.preflight"):
        resolved = preflight(cfg, run_dir, ("ppo",))
    assert _rates(resolved) == (5e-6, 4e-5, 1e-6, 9e-6)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (stored["ppo"]["lr"], stored["sft"]["lr"], stored["rm"]["lr"]) == (1e-6, 5e-6, 4e-5)
    # Only the PPO stage runs: its rate is the one reported.
    assert "learning rates: ppo.lr 1e-06 (ppo.lr: the pretrained-model defaults for 25." in (
        caplog.text
    )


def test_preflight_gives_the_toy_worlds_tiny_model_the_small_rates(tmp_path):
    cfg = load_config(
        None, [f"run.output_dir={tmp_path}", "data.toyworld.n_sft=50", "sft.batch_size=2"]
    )
    resolved = preflight(cfg, prepare_run_dir(cfg), ("sft",))
    assert _rates(resolved) == (3e-3, 1e-3, 1e-4, 5e-4)
