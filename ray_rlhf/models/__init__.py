"""HF models for ray_rlhf: word tokenizer, tiny Llama factory, role builders, checkpoint I/O."""

from ray_rlhf.models.builders import (
    HEAD_CONFIG_KEY,
    RewardHead,
    last_token_values,
    load_critic,
    load_policy,
    load_reward_model,
    load_tokenizer,
    position_ids_from_mask,
    score_positions,
)
from ray_rlhf.models.checkpoint import (
    METADATA_FILE,
    ModelDirError,
    atomic_dir,
    load_json,
    load_tensors,
    save_hf_model,
    save_json_atomic,
    save_tensors,
    validate_model_dir,
)
from ray_rlhf.models.factory import (
    VLLM_CPU_HEAD_DIMS,
    TinyModelSpec,
    build_tiny_model,
    tiny_llama_config,
    write_tiny_model,
)
from ray_rlhf.models.tokenizer import DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS, build_word_tokenizer

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "HEAD_CONFIG_KEY",
    "METADATA_FILE",
    "SPECIAL_TOKENS",
    "VLLM_CPU_HEAD_DIMS",
    "ModelDirError",
    "RewardHead",
    "TinyModelSpec",
    "atomic_dir",
    "build_tiny_model",
    "build_word_tokenizer",
    "last_token_values",
    "load_critic",
    "load_json",
    "load_policy",
    "load_reward_model",
    "load_tensors",
    "load_tokenizer",
    "position_ids_from_mask",
    "save_hf_model",
    "save_json_atomic",
    "save_tensors",
    "score_positions",
    "tiny_llama_config",
    "validate_model_dir",
    "write_tiny_model",
]
