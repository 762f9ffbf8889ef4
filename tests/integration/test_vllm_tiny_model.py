"""vLLM (CPU, in-process) serves the tiny Llama + word tokenizer the factory writes.

Checks that generation works from token ids and from text, that vLLM's sampled-token
logprobs match an HF forward pass of the same weights, and that the engine shuts down
without leaving /dev/shm segments behind.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ray_rlhf.models import TinyModelSpec, build_word_tokenizer, load_policy, write_tiny_model

pytestmark = pytest.mark.integration

WORDS = ["sort", "rev", "copy", "=", *[str(d) for d in range(10)]]
KV_CACHE_BYTES = 4 << 20  # 4 MiB: ~4k tokens for the tiny model, plenty for one test.


def _psm_segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def _hf_logprobs(model_dir: Path, prompt: list[int], response: list[int]) -> torch.Tensor:
    """(R,) log-probabilities of `response` after `prompt` under the HF model."""
    model = load_policy(model_dir)
    ids = torch.tensor([prompt + response])  # (1, P + R)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (R, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


@contextlib.contextmanager
def _tiny_engine(model_dir: Path) -> Iterator[Any]:
    """An in-process vLLM engine on `model_dir`, shut down and released on exit."""
    from vllm import LLM
    from vllm.distributed import cleanup_dist_env_and_memory

    llm = LLM(
        model=str(model_dir),
        enforce_eager=True,
        dtype="float32",
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        max_model_len=128,
        seed=0,
    )
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        cleanup_dist_env_and_memory()
        gc.collect()


def _check_token_prompt(llm: Any, tokenizer: Any, model_dir: Path) -> None:
    """Generates from token ids; vLLM's logprobs must match HF's on the same tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = tokenizer("sort 3 1 2 =").input_ids
    params = SamplingParams(max_tokens=8, logprobs=0, temperature=1.0, seed=0)
    (result,) = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params)
    out = result.outputs[0]
    response = list(out.token_ids)

    assert 0 < len(response) <= 8
    assert all(0 <= t < len(tokenizer) for t in response)
    vllm_logprobs = torch.tensor(
        [step[t].logprob for step, t in zip(out.logprobs, response, strict=True)]
    )
    hf_logprobs = _hf_logprobs(model_dir, prompt, response)
    torch.testing.assert_close(vllm_logprobs, hf_logprobs, atol=1e-4, rtol=0)
    # vLLM's incremental detokenizer puts a space before the first generated word.
    assert out.text.strip() == tokenizer.decode(response, skip_special_tokens=True)


def _check_text_prompt(llm: Any, tokenizer: Any) -> None:
    """vLLM tokenizes text with the saved tokenizer exactly as HF does (BOS included)."""
    from vllm import SamplingParams

    (result,) = llm.generate(["sort 3 1 2 ="], SamplingParams(max_tokens=2, temperature=0.0))
    assert result.prompt_token_ids == tokenizer("sort 3 1 2 =").input_ids
    assert llm.get_tokenizer().eos_token_id == tokenizer.eos_token_id


def test_vllm_serves_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # VLLM_CPU_KVCACHE_SPACE (whole GiB) overrides kv_cache_memory_bytes when it is set.
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    tokenizer = build_word_tokenizer(WORDS)
    model_dir = write_tiny_model(tmp_path / "tiny", tokenizer, TinyModelSpec(seed=0))
    shm_before = _psm_segments()

    with _tiny_engine(model_dir) as llm:
        _check_token_prompt(llm, tokenizer, model_dir)
        _check_text_prompt(llm, tokenizer)

    assert _psm_segments() <= shm_before
