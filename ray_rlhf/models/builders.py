"""Builders for the policy, critic and reward model from any local HF causal-LM directory.

The critic and both reward-model kinds are HF's standard `AutoModelForTokenClassification`
with one label: a value at every position. A causal LM directory gives the backbone and a
freshly initialized head; a directory these builders saved reloads as is, with plain
transformers too. The reward model's head type is recorded as `config.ray_rlhf_head`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)

from ray_rlhf.models.checkpoint import ModelDirError, load_json, validate_model_dir

RewardHead = Literal["scalar", "per_position"]
""""scalar": a sequence's score is the value at its last non-pad token.
"per_position": every position's value is used (segment / token-level rewards)."""

HEAD_CONFIG_KEY = "ray_rlhf_head"
"""Config attribute recording a reward model's `RewardHead`."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_ModelKind = Literal["causal_lm", "token_classification"]


def _validated(model_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Validates a model directory; returns its resolved path and its `config.json`."""
    path = validate_model_dir(model_dir)
    return path, load_json(path / "config.json")


def _model_kind(config: dict[str, Any], model_dir: Path) -> _ModelKind:
    """Classifies a directory by its `config.json` architecture."""
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures else None
    if isinstance(arch, str) and arch.endswith("ForCausalLM"):
        return "causal_lm"
    if isinstance(arch, str) and arch.endswith("ForTokenClassification"):
        return "token_classification"
    raise ModelDirError(
        f"model dir {model_dir}: architecture {arch!r} is not a causal LM "
        "(config.json 'architectures' should name a *ForCausalLM class)"
    )


def _check_auto_class(
    config: dict[str, Any],
    model_dir: Path,
    auto_class: type,
    mapping: dict[str, str],
    trust_remote_code: bool,
) -> None:
    """Checks that `auto_class` can build the directory's model type."""
    model_type = config.get("model_type")
    if model_type in mapping:
        return
    if trust_remote_code and auto_class.__name__ in (config.get("auto_map") or {}):
        return
    raise ModelDirError(
        f"model dir {model_dir}: model_type {model_type!r} has no {auto_class.__name__} "
        "in transformers (custom code needs trust_remote_code=True and an auto_map entry)"
    )


def load_tokenizer(
    model_dir: str | os.PathLike[str], *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Loads the tokenizer saved in a model directory.

    Args:
        model_dir: A model directory that also holds tokenizer files.
        trust_remote_code: Allow custom tokenizer code from the directory.

    Returns:
        The tokenizer.

    Raises:
        ModelDirError: If the directory is invalid or holds no tokenizer files.
    """
    path = validate_model_dir(model_dir)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelDirError(
            f"model dir {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
        )
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def check_policy_dir(model_dir: str | os.PathLike[str], *, trust_remote_code: bool) -> Path:
    """Checks, without loading weights, that a directory holds a causal LM transformers builds.

    Returns:
        The resolved directory.

    Raises:
        ModelDirError: If the directory is invalid, not a causal LM, or of a model type
            transformers cannot build (without `trust_remote_code` and an `auto_map`).
    """
    path, config = _validated(model_dir)
    if _model_kind(config, path) != "causal_lm":
        raise ModelDirError(
            f"model dir {path} holds a token-classification (value) model, not a causal "
            "LM; a policy needs the LM head"
        )
    _check_auto_class(
        config, path, AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, trust_remote_code
    )
    return path


def check_reward_model_dir(
    model_dir: str | os.PathLike[str], *, head: RewardHead, trust_remote_code: bool
) -> Path:
    """Checks, without loading weights, that a directory holds a saved reward model with
    `head` (`ray_rlhf_head` in its config) and a tokenizer.

    Returns:
        The resolved directory.

    Raises:
        ModelDirError: If the directory is invalid, not a one-label token-classification
            model, a reward model of another head, or has no tokenizer.
    """
    path, config = _validated(model_dir)
    if _model_kind(config, path) != "token_classification":
        raise ModelDirError(
            f"model dir {path} holds a causal LM, not a reward model (a `ray-rlhf train-rm` "
            "output: a token-classification model with a one-value head)"
        )
    _check_auto_class(
        config,
        path,
        AutoModelForTokenClassification,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        trust_remote_code,
    )
    recorded = config.get(HEAD_CONFIG_KEY, "scalar")
    if recorded != head:
        raise ModelDirError(f"model dir {path} holds a {recorded!r} reward model, not {head!r}")
    load_tokenizer(path, trust_remote_code=trust_remote_code)
    return path


def reward_head(model_dir: str | os.PathLike[str]) -> RewardHead:
    """The head a saved reward model records (`config.ray_rlhf_head`); "scalar" when it
    records none (a reward model trained elsewhere).

    Raises:
        ModelDirError: If the directory is not a valid model directory or records an
            unknown head.
    """
    path, config = _validated(model_dir)
    head = config.get(HEAD_CONFIG_KEY, "scalar")
    if head not in get_args(RewardHead):
        raise ModelDirError(
            f"model dir {path}: config.json records {HEAD_CONFIG_KEY}={head!r}, not one of "
            f"{list(get_args(RewardHead))}"
        )
    return head


def load_policy(
    model_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Loads a causal LM (the policy, or the frozen reference) from safetensors weights.

    Args:
        model_dir: A HF causal-LM directory.
        dtype: Parameter dtype.
        trust_remote_code: Allow custom model code from the directory.

    Returns:
        The model, in eval mode (as `from_pretrained` returns it).

    Raises:
        ModelDirError: If the directory is invalid or not a causal LM.
    """
    path = check_policy_dir(model_dir, trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )


def _init_value_head(model: PreTrainedModel, seed: int) -> None:
    """Re-initializes the one-label `score` head: N(0, 1/(H+1)) weights, zero bias.

    The small std (OpenRLHF's value-head init) keeps the first values near zero.
    """
    head = model.score
    generator = torch.Generator().manual_seed(seed)
    std = 1.0 / (model.config.get_text_config().hidden_size + 1)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=generator) * std
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


def _load_value_model(
    model_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    seed: int,
    config_updates: dict[str, Any],
) -> PreTrainedModel:
    """Loads a one-label token-classification model from a causal LM or a saved value model.

    From a causal LM the backbone weights are loaded and the head is freshly initialized
    (seeded); from a saved token-classification model everything is loaded as is.
    Classifier dropout is set to 0 so values are deterministic in train mode.
    """
    path, raw = _validated(model_dir)
    kind = _model_kind(raw, path)
    _check_auto_class(
        raw,
        path,
        AutoModelForTokenClassification,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        trust_remote_code,
    )
    if kind == "token_classification" and raw.get("num_labels", len(raw.get("id2label", {}))) != 1:
        raise ModelDirError(f"model dir {path}: a value model needs exactly one label")
    config: PretrainedConfig = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    for key, value in config_updates.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):  # the missing head's default init uses the RNG
        model = AutoModelForTokenClassification.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    if kind == "causal_lm":
        _init_value_head(model, seed)
    return model


def load_critic(
    model_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """Builds the critic: a value at every position.

    Args:
        model_dir: A causal LM (new head, seeded) or a saved critic / reward model (as is).
        dtype: Parameter dtype.
        trust_remote_code: Allow custom model code from the directory.
        seed: Seed of the new head's initialization.

    Returns:
        An `AutoModelForTokenClassification` with `num_labels=1`; see `score_positions`.

    Raises:
        ModelDirError: If the directory is invalid or not a model this can build from.
    """
    return _load_value_model(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed, config_updates={}
    )


def load_reward_model(
    model_dir: str | os.PathLike[str],
    *,
    head: RewardHead = "scalar",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """Builds a reward model, recording `head` as `config.ray_rlhf_head`.

    Args:
        model_dir: A causal LM (new head, seeded) or a saved reward model (as is).
        head: "scalar" (score = value at the last non-pad token, see `last_token_values`)
            or "per_position" (every position's value is used).
        dtype: Parameter dtype.
        trust_remote_code: Allow custom model code from the directory.
        seed: Seed of the new head's initialization.

    Returns:
        An `AutoModelForTokenClassification` with `num_labels=1`.

    Raises:
        ValueError: If `head` is not a `RewardHead`.
        ModelDirError: If the directory is invalid, not a model this can build from, or a
            saved reward model whose recorded head differs from `head`.
    """
    if head not in get_args(RewardHead):
        raise ValueError(f"head must be one of {get_args(RewardHead)}, got {head!r}")
    path, config = _validated(model_dir)
    recorded = config.get(HEAD_CONFIG_KEY)
    if recorded is not None and recorded != head:
        raise ModelDirError(
            f"model dir {path} holds a {recorded!r} reward model; asked for head={head!r}"
        )
    return _load_value_model(
        path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        seed=seed,
        config_updates={HEAD_CONFIG_KEY: head},
    )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift them.

    Args:
        attention_mask: (B, T), 1 for real tokens, 0 for padding.

    Returns:
        (B, T) long tensor: 0, 1, 2, ... over the real tokens, 0 on leading padding.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def score_positions(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Per-position values of a critic or reward model (keeps the autograd graph).

    Args:
        model: A one-label token-classification model (`load_critic`, `load_reward_model`).
        input_ids: (B, T) token ids, left or right padded.
        attention_mask: (B, T), 1 for real tokens, 0 for padding.

    Returns:
        (B, T) values; those at padded positions are meaningless.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.logits.squeeze(-1)  # (B, T, 1) -> (B, T)


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The value at each row's last real token: a "scalar" reward model's sequence score.

    Args:
        values: (B, T) per-position values (`score_positions`).
        attention_mask: (B, T), 1 for real tokens, 0 for padding; left or right padded.

    Returns:
        (B,) values.

    Raises:
        ValueError: If a row has no real token.
    """
    last = _last_positions(attention_mask)  # (B,)
    return values.gather(-1, last.unsqueeze(-1)).squeeze(-1)


def last_token_states(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at each row's last real token (where a scalar RM reads its score).

    Args:
        states: (B, T, H) per-position hidden states.
        attention_mask: (B, T), 1 for real tokens, 0 for padding; left or right padded.

    Returns:
        (B, H) states.

    Raises:
        ValueError: If a row has no real token.
    """
    last = _last_positions(attention_mask)  # (B,)
    return states[torch.arange(states.shape[0], device=states.device), last]


def _last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token; ValueError if a row has none."""
    mask = attention_mask.bool()
    if not mask.any(dim=-1).all():
        raise ValueError("every row of attention_mask needs at least one real token")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).amax(dim=-1)
