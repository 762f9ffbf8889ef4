"""Datasets for every stage: prompts, preference pairs, SFT pairs, and their tokenization.

Every loader checks all rows before returning and raises one `DataValidationError` that
names file, row and field of each problem; nothing is skipped silently.

The names below are imported on first use, so that importing a light submodule (such as
`ray_rlhf.data.toyworld.spec`, which the config imports) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_rlhf.data.errors import DataValidationError, Problem, ProblemCollector
    from ray_rlhf.data.meta_responses import load_meta_responses
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.data.prompts import generated_ids, load_prompts
    from ray_rlhf.data.sft import load_sft
    from ray_rlhf.data.sources import DataSource, open_dataset, open_source
    from ray_rlhf.data.tokenize import (
        EncodedExample,
        encode_prompt_response,
        encode_prompts,
        pad_batch,
    )

_EXPORTS = {
    "DataValidationError": "errors",
    "Problem": "errors",
    "ProblemCollector": "errors",
    "load_meta_responses": "meta_responses",
    "load_preferences": "preferences",
    "generated_ids": "prompts",
    "load_prompts": "prompts",
    "load_sft": "sft",
    "DataSource": "sources",
    "open_dataset": "sources",
    "open_source": "sources",
    "EncodedExample": "tokenize",
    "encode_prompt_response": "tokenize",
    "encode_prompts": "tokenize",
    "pad_batch": "tokenize",
}

__all__ = [
    "DataSource",
    "DataValidationError",
    "EncodedExample",
    "Problem",
    "ProblemCollector",
    "encode_prompt_response",
    "encode_prompts",
    "generated_ids",
    "load_meta_responses",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "open_dataset",
    "open_source",
    "pad_batch",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"ray_rlhf.data.{_EXPORTS[name]}"), name)
