"""The benchmark's ray_rlhf side is configured for the same work as TRL's: plain-text prompts
(no chat template), one optimizer step per iteration, exactly `tokens` generated tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks.ray_side import ppo_overrides
from benchmarks.settings import Workload
from ray_rlhf.config import load_config


def test_ppo_overrides_give_trl_equal_work(tmp_path: Path) -> None:
    w = Workload(size="smollm2", prompts=4, n=4, tokens=32, max_prompt_tokens=64)
    spec = {
        "workload": dataclasses.asdict(w),
        "out_dir": str(tmp_path),
        "name": "r0",
        "model_dir": str(tmp_path / "model"),
        "prompts_path": str(tmp_path / "p.jsonl"),
        "eval_prompts_path": str(tmp_path / "e.jsonl"),
        "algo": "rloo",
        "iterations": 3,
    }
    cfg = load_config(None, ppo_overrides(spec))
    # TRL and the floor tokenize the prompt strings as written; SmolLM2's chat template
    # would add a system turn of ~30 tokens to each of ray_rlhf's rows.
    assert cfg.data.chat_template == "never"
    assert cfg.rollout.ignore_eos and cfg.data.max_response_tokens == 32
    assert cfg.ppo.minibatch_size == 16 == cfg.ppo.prompts_per_iteration * cfg.rollout.n_samples
