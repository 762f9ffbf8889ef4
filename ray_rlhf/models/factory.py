"""The tiny Llama: a randomly initialized model built from a config, for tests and the demo.

No model hub is reachable, so the default run starts from a model this module writes to a
normal HF directory (safetensors weights, tokenizer, generation config) that transformers,
DeepSpeed and vLLM all load like any other checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ray_rlhf.models.checkpoint import save_hf_model

VLLM_CPU_HEAD_DIMS: frozenset[int] = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256})
"""Head sizes vLLM's CPU attention backend supports (see docs/cpu_stack.md "vLLM on CPU")."""


@dataclasses.dataclass(frozen=True)
class TinyModelSpec:
    """Size and seed of a tiny Llama.

    The defaults (84k parameters plus embeddings) train the toy world about as well per
    step as a 4× larger model at a third of the cost (docs/algorithms.md, "The toy world").
    """

    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 2
    """Attention heads (also key/value heads: no grouped-query attention)."""
    intermediate_size: int = 256
    """Width of the MLP's hidden layer."""
    max_position_embeddings: int = 128
    """Longest sequence (prompt + response) the model supports."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the LM head."""
    seed: int = 0
    """Seed of the random initialization; the same seed gives identical weights."""

    def __post_init__(self) -> None:
        for field in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TinyModelSpec.{field} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinyModelSpec.hidden_size ({self.hidden_size}) must be divisible by "
                f"TinyModelSpec.num_heads ({self.num_heads}) so that head_dim is an integer"
            )
        if self.head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"TinyModelSpec.hidden_size / TinyModelSpec.num_heads = {self.hidden_size} / "
                f"{self.num_heads} gives head_dim {self.head_dim}, which vLLM's CPU attention "
                f"backend does not support; it needs one of {sorted(VLLM_CPU_HEAD_DIMS)} "
                "(e.g. hidden_size=64 with num_heads=2)"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"TinyModelSpec.seed must be a non-negative int, got {self.seed!r}")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_heads


def tiny_llama_config(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """Builds the `LlamaConfig` of a tiny model whose vocabulary is the tokenizer's.

    Args:
        spec: Model size and seed.
        tokenizer: Supplies the vocabulary size and the pad/bos/eos ids.

    Returns:
        A float32 `LlamaConfig`.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype=torch.float32,
    )


def build_tiny_model(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Builds a randomly initialized tiny `LlamaForCausalLM`, deterministic in `spec.seed`.

    The global torch RNG is left untouched.

    Args:
        spec: Model size and seed.
        tokenizer: Supplies the vocabulary and special-token ids.

    Returns:
        The model in eval mode, with a generation config holding the bos/eos/pad ids.
    """
    config = tiny_llama_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def write_tiny_model(
    out_dir: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    spec: TinyModelSpec | None = None,
) -> Path:
    """Writes a freshly initialized tiny Llama with its tokenizer to `out_dir`, atomically.

    The directory gets `config.json`, `model.safetensors`, `generation_config.json` and the
    tokenizer files; it is assembled in a sibling temp dir and renamed into place.

    Args:
        out_dir: Destination directory (replaced if it exists).
        tokenizer: Tokenizer saved with the model (e.g. from `build_word_tokenizer`).
        spec: Model size and seed; `TinyModelSpec()` when None.

    Returns:
        `out_dir` as a Path.
    """
    model = build_tiny_model(spec or TinyModelSpec(), tokenizer)
    return save_hf_model(model, tokenizer, out_dir)
