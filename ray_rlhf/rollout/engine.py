"""The vLLM engine: creation with the settings the CPU build needs, generation, shutdown.

vLLM is imported lazily so that importing this module stays cheap. See STACK.md
("vLLM on CPU") for why each setting is here.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Completion:
    """One sampled response.

    Attributes:
        token_ids: response token ids, EOS included when generation stopped on it.
        logprobs: sampling logprob of each token in `token_ids` (same length).
        finished: True when generation stopped on EOS (not on the length limit).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finished: bool


def create_engine(
    model_dir: str | Path,
    *,
    dtype: str = "float32",
    seed: int = 0,
    kv_cache_mib: int = 64,
    enforce_eager: bool = True,
    max_model_len: int = 128,
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """An in-process `vllm.LLM` on `model_dir`.

    Args:
        kv_cache_mib: explicit KV-cache size; vLLM's CPU auto-sizing fails on these hosts.
            (`VLLM_CPU_KVCACHE_SPACE`, when set, overrides it: leave that variable unset.)
        threads: OpenMP threads for the engine; without an explicit count CPU generation is
            ~10x slower (STACK.md "Threads").
    """
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm

    return vllm.LLM(
        model=str(model_dir),
        dtype=dtype,
        seed=seed,
        enforce_eager=enforce_eager,
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_cache_mib * 2**20,
        trust_remote_code=trust_remote_code,
    )


def generate(
    llm: Any,
    prompt_token_ids: list[list[int]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 16,
    seed: int | None = None,
) -> list[list[Completion]]:
    """Sample `n` completions for each prompt (given as token ids).

    Returns:
        One list of `n` completions per prompt, in prompt order.
    """
    import vllm
    from vllm.inputs import TokensPrompt

    params = vllm.SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0, seed=seed
    )
    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
    outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    return [[_completion(c) for c in out.outputs] for out in outputs]


def _completion(output: Any) -> Completion:
    ids = tuple(output.token_ids)
    steps = zip(ids, output.logprobs, strict=True)
    logprobs = tuple(float(step[tok].logprob) for tok, step in steps)
    return Completion(ids, logprobs, finished=output.finish_reason == "stop")


def shutdown_engine(llm: Any) -> None:
    """Stop the engine core and free its distributed state (no /dev/shm leftovers)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    from vllm.distributed import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    gc.collect()
