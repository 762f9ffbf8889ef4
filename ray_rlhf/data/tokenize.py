"""Token ids for (prompt, response) pairs and padded batches of them.

Prompt tokens are `tokenizer(prompt, add_special_tokens=True)`, so a BOS is added if the
tokenizer adds one. Response tokens are `tokenizer(response, add_special_tokens=False)`
followed by the EOS id; the loss is taken on them (response_mask True), never on the prompt.
A prompt rendered by a chat template that already starts with the BOS text would get a
second BOS here; check the template before combining the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class EncodedExample(NamedTuple):
    """One tokenized (prompt, response) pair.

    Attributes:
        input_ids: Prompt tokens then response tokens then EOS, length T.
        response_mask: Length T; True on the response tokens and the EOS, False on the prompt.
    """

    input_ids: list[int]
    response_mask: list[bool]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Encodes prompts for generation exactly as `encode_prompt_response` encodes them."""
    if not prompts:
        return []
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    *,
    max_length: int | None = None,
) -> EncodedExample:
    """Encodes a prompt and its response, marking the tokens the loss is taken on.

    Args:
        tokenizer: Tokenizer with an `eos_token_id`.
        prompt: Prompt text (already rendered if it came from a conversation).
        response: Response text, without EOS.
        max_length: If set, the longest allowed total length. Truncating is the caller's
            decision, so a longer example is an error.

    Returns:
        input_ids = prompt ids + response ids + [eos]; response_mask True from the first
        response id to the EOS inclusive.

    Raises:
        ValueError: The tokenizer has no EOS id, or the example is longer than `max_length`.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; responses must end with EOS")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    response_ids.append(tokenizer.eos_token_id)
    total = len(prompt_ids) + len(response_ids)
    if max_length is not None and total > max_length:
        raise ValueError(
            f"example has {total} tokens ({len(prompt_ids)} prompt + {len(response_ids)} "
            f"response incl. EOS), more than max_length={max_length}"
        )
    mask = [False] * len(prompt_ids) + [True] * len(response_ids)
    return EncodedExample(prompt_ids + response_ids, mask)


def pad_batch(
    examples: Sequence[EncodedExample],
    pad_id: int,
    *,
    side: Literal["left", "right"] = "right",
) -> dict[str, torch.Tensor]:
    """Pads encoded examples to the longest one.

    Args:
        examples: B encoded examples.
        pad_id: Token id written into padding positions.
        side: Where the padding goes; "left" aligns the sequence ends (for generation).

    Returns:
        input_ids (B, T) long; attention_mask (B, T) bool, True on real tokens;
        response_mask (B, T) bool, True on response tokens and EOS, False on prompt and
        padding. T is the longest example's length.

    Raises:
        ValueError: No examples, an example whose mask length differs from its ids, or an
            unknown side.
    """
    if not examples:
        raise ValueError("pad_batch needs at least one example")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.bool)  # (B, T)
    response_mask = torch.zeros((len(examples), width), dtype=torch.bool)  # (B, T)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        if len(example.response_mask) != length:
            raise ValueError(
                f"example {row}: {length} input ids but {len(example.response_mask)} mask values"
            )
        span = slice(0, length) if side == "right" else slice(width - length, width)
        input_ids[row, span] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, span] = True
        response_mask[row, span] = torch.tensor(example.response_mask, dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
    }
