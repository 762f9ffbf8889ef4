"""The vLLM engine: creation with the settings the CPU build needs, generation, shutdown.

vLLM is imported lazily so that importing this module stays cheap. See docs/cpu_stack.md
("vLLM on CPU") for why each setting is here.
"""

from __future__ import annotations

import gc
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHT_RELOAD_EXTENSION = "ray_rlhf.rollout.engine.WeightReloadExtension"
"""Qualified name of the worker extension every engine gets (see `reload_weights`)."""


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
            ~10x slower (docs/cpu_stack.md "Threads").
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
        worker_extension_cls=WEIGHT_RELOAD_EXTENSION,
    )


def prompt_seeds(
    seed: int | Sequence[int] | None, num_prompts: int, n: int
) -> Sequence[int | None]:
    """Per-prompt sampling seeds (see `generate`): a base seed gives prompt i `seed + i * n`."""
    if seed is None:
        return [None] * num_prompts
    if isinstance(seed, int):
        return [seed + i * n for i in range(num_prompts)]
    return seed


def generate(
    llm: Any,
    prompt_token_ids: list[list[int]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 16,
    seed: int | Sequence[int] | None = None,
    ignore_eos: bool = False,
) -> list[list[Completion]]:
    """Sample `n` completions for each prompt (given as token ids).

    Args:
        seed: a base seed, one seed per prompt, or None (unseeded). vLLM seeds sample j of
            a prompt with `prompt_seed + j`; a base seed gives prompt i the seed
            `seed + i * n`, so no two samples share a random stream (one seed shared by every
            prompt would correlate their samples and bias a mean over prompts).
        ignore_eos: sample past EOS, so every completion has exactly `max_tokens` tokens.

    Returns:
        One list of `n` completions per prompt, in prompt order.
    """
    import vllm
    from vllm.inputs import TokensPrompt

    seeds = prompt_seeds(seed, len(prompt_token_ids), n)
    if len(seeds) != len(prompt_token_ids):
        raise ValueError(f"{len(seeds)} seeds for {len(prompt_token_ids)} prompts")
    params = [
        vllm.SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            logprobs=0,
            seed=s,
            ignore_eos=ignore_eos,
        )
        for s in seeds
    ]
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


# --------------------------------------------------------------------------- weight updates


def pack_tensors(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize tensors as one safetensors blob (no pickle); `unpack_tensors` restores order.

    Tensors sharing storage (tied embeddings, views into one flat buffer) are copied, since
    safetensors refuses aliases.
    """
    from safetensors.torch import save

    seen: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        flat[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return save(flat, metadata={"order": json.dumps(list(flat))})


def unpack_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    """Tensors of a `pack_tensors` blob, in the order they were packed."""
    from safetensors.torch import load

    tensors = load(blob)
    (header_len,) = struct.unpack("<Q", blob[:8])
    order = json.loads(json.loads(blob[8 : 8 + header_len])["__metadata__"]["order"])
    return {name: tensors[name] for name in order}


class WeightReloadExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`) in every engine process.

    A multiprocess engine cannot receive tensors through `collective_rpc` (msgpack turns them
    into lists), so weights travel as safetensors bytes and are unpacked here.
    """

    def reload_weights_from_blobs(self, blobs: list[bytes]) -> None:
        """Reload full HF-named weights from `pack_tensors` blobs (in the engine process)."""
        state: dict[str, torch.Tensor] = {}
        for blob in blobs:
            state.update(unpack_tensors(blob))
        self.reload_weights(weights_iterator=iter(state.items()))  # vLLM Worker method


def reload_weights(llm: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Replace the engine's weights in place with full HF-named `state`; drop cached prefixes.

    Uses vLLM's `reload_weights` (which handles the CPU path's prepacked weights; a plain
    `model.load_weights` does not). In-process engines get the tensors directly;
    multiprocess engines get a safetensors blob through `WeightReloadExtension`.
    """
    from vllm.v1.engine.core_client import InprocClient

    if isinstance(llm.llm_engine.engine_core, InprocClient):
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
    else:
        llm.collective_rpc("reload_weights_from_blobs", args=([pack_tensors(state)],))
    llm.reset_prefix_cache()
