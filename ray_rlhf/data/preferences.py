"""Preference datasets: (prompt, chosen, rejected) triples for reward-model training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import datasets

from ray_rlhf.data.errors import DataValidationError, ProblemCollector
from ray_rlhf.data.prompts import (
    ChatTemplateMode,
    build_output,
    check_limits_have_tokenizer,
    check_no_clash,
    check_token_lengths,
    final_response,
    holds_conversations,
    messages_or_none,
    missing_columns_error,
    read_ids,
    read_prompts,
    render_prompt,
    require_chat_template,
    text_or_none,
)
from ray_rlhf.data.sources import DataSource, open_source

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

_LAYOUTS = (
    "plain (columns prompt, chosen, rejected holding text) or chat (chosen and rejected "
    "holding message lists that end with the assistant response, optionally with a prompt "
    "message list)"
)


class _Pairs(NamedTuple):
    """Parsed rows; None where a row has a problem."""

    prompts: list[str | None]
    chosen: list[str | None]
    rejected: list[str | None]


def load_preferences(
    source: str | Path | datasets.Dataset,
    *,
    split: str = "train",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    id_key: str = "id",
    chat_template: ChatTemplateMode = "auto",
) -> datasets.Dataset:
    """Loads and validates a preference dataset.

    Layouts, chosen by what `chosen_key` holds:
      - plain: `prompt_key`, `chosen_key`, `rejected_key` hold text (the prompt may instead
        be a conversation, rendered with the chat template).
      - chat: `chosen_key` and `rejected_key` hold conversations whose last message is the
        assistant response. The messages before it must be the same in both; they form the
        prompt, preceded by the messages of `prompt_key` if that column exists (it must then
        hold conversations too). The prompt is rendered with the chat template and
        `add_generation_prompt=True`; each response is its last message's content.

    Args:
        source: See `ray_rlhf.data.sources.open_dataset`.
        split: Hub split to load; local sources ignore it.
        tokenizer: Renders conversations (needs a chat template) and counts tokens.
        max_prompt_tokens: Longest allowed prompt in tokens (without special tokens).
        max_response_tokens: Longest allowed chosen / rejected response in tokens (without
            special tokens; the EOS that `encode_prompt_response` appends is not counted).
        prompt_key: Prompt column.
        chosen_key: Preferred response column.
        rejected_key: Dispreferred response column.
        id_key: Column of row ids (str()-ed, unique); without it ids are generated from the
            prompt (see `ray_rlhf.data.prompts.generated_ids`).
        chat_template: Render plain-text prompts with the chat template
            (`ray_rlhf.data.prompts.uses_chat_template`).

    Returns:
        Columns `id`, `prompt`, `chosen`, `rejected` (str), then every other input column.

    Raises:
        DataValidationError: Naming file, row and field: missing column, empty / non-string
            text, bad conversation, prompts that differ between chosen and rejected, identical
            responses, over-long prompt or response, duplicate id.
        ValueError: A token limit without a tokenizer.
    """
    check_limits_have_tokenizer(
        tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens
    )
    src = open_source(source, split=split)
    columns = src.dataset.column_names
    missing = [key for key in (chosen_key, rejected_key) if key not in columns]
    if missing:
        raise missing_columns_error(src, missing, _LAYOUTS)
    chat = holds_conversations(src.dataset[chosen_key])
    if not chat and prompt_key not in columns:
        raise missing_columns_error(src, [prompt_key], _LAYOUTS)
    consumed = [prompt_key, chosen_key, rejected_key, id_key]
    check_no_clash(src, consumed=consumed, outputs=["id", "prompt", "chosen", "rejected"])

    problems = src.collector()
    keys = (prompt_key, chosen_key, rejected_key)
    if chat:
        pairs = _read_chat_pairs(src, keys, tokenizer, problems)
    else:
        pairs = _read_plain_pairs(src, keys, tokenizer, problems, chat_template)
    _check_distinct(pairs, rejected_key, chosen_key, problems)
    prompt_field = prompt_key if prompt_key in columns else chosen_key
    check_token_lengths(tokenizer, pairs.prompts, max_prompt_tokens, prompt_field, problems)
    for key, responses in ((chosen_key, pairs.chosen), (rejected_key, pairs.rejected)):
        check_token_lengths(
            tokenizer,
            responses,
            max_response_tokens,
            key,
            problems,
            limit_name="max_response_tokens",
        )
    ids = read_ids(src, id_key, pairs.prompts, problems)
    problems.raise_if_any()
    output = {"id": ids, "prompt": pairs.prompts}
    output |= {"chosen": pairs.chosen, "rejected": pairs.rejected}
    return build_output(src, output, consumed=consumed)


def _read_plain_pairs(
    src: DataSource,
    keys: tuple[str, str, str],
    tokenizer: PreTrainedTokenizerBase | None,
    problems: ProblemCollector,
    chat_template: ChatTemplateMode,
) -> _Pairs:
    prompt_key, chosen_key, rejected_key = keys
    prompts = read_prompts(src, prompt_key, tokenizer, problems, chat_template=chat_template)
    chosen = [
        text_or_none(value, row, chosen_key, problems)
        for row, value in enumerate(src.dataset[chosen_key])
    ]
    rejected = [
        text_or_none(value, row, rejected_key, problems)
        for row, value in enumerate(src.dataset[rejected_key])
    ]
    return _Pairs(prompts, chosen, rejected)


def _read_chat_pairs(
    src: DataSource,
    keys: tuple[str, str, str],
    tokenizer: PreTrainedTokenizerBase | None,
    problems: ProblemCollector,
) -> _Pairs:
    prompt_key, chosen_key, rejected_key = keys
    require_chat_template(src, tokenizer, chosen_key)
    prefixes = _read_prompt_prefixes(src, prompt_key, chosen_key, problems)
    pairs = _Pairs([], [], [])
    rows = zip(prefixes, src.dataset[chosen_key], src.dataset[rejected_key], strict=True)
    for row, (prefix, chosen_value, rejected_value) in enumerate(rows):
        chosen = messages_or_none(chosen_value, row, chosen_key, problems)
        rejected = messages_or_none(rejected_value, row, rejected_key, problems)
        parsed: tuple[str | None, str | None, str | None] = (None, None, None)
        if prefix is not None and chosen is not None and rejected is not None:
            parsed = _chat_pair(tokenizer, prefix, chosen, rejected, row, keys, problems)
        for column, value in zip(pairs, parsed, strict=True):
            column.append(value)
    return pairs


def _read_prompt_prefixes(
    src: DataSource, prompt_key: str, chosen_key: str, problems: ProblemCollector
) -> list[list[dict[str, Any]] | None]:
    """Reads the optional prompt conversations of the chat layout ([] per row if absent)."""
    if prompt_key not in src.dataset.column_names:
        return [[] for _ in range(src.dataset.num_rows)]
    values = list(src.dataset[prompt_key])
    if not holds_conversations(values):
        raise DataValidationError(
            src.name,
            f"holds text while {chosen_key!r} holds conversations; in the chat layout the prompt "
            f"is the messages before the response, optionally preceded by a {prompt_key!r} "
            "message list: drop the column or make it a message list",
            field=prompt_key,
        )
    return [messages_or_none(value, row, prompt_key, problems) for row, value in enumerate(values)]


def _chat_pair(
    tokenizer: PreTrainedTokenizerBase,
    prefix: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    row: int,
    keys: tuple[str, str, str],
    problems: ProblemCollector,
) -> tuple[str | None, str | None, str | None]:
    """Splits two conversations into (rendered shared prompt, chosen, rejected response).

    The prompt is `prefix` followed by every message before the responses, which must be
    the same in both conversations.
    """
    prompt_key, chosen_key, rejected_key = keys
    chosen_response = final_response(chosen, row, chosen_key, problems)
    rejected_response = final_response(rejected, row, rejected_key, problems)
    if chosen_response is None or rejected_response is None:
        return None, None, None
    if chosen[:-1] != rejected[:-1]:
        problems.add(
            row,
            rejected_key,
            f"the messages before the response differ from those of {chosen_key!r}; "
            "both must continue the same prompt",
        )
        return None, None, None
    field = prompt_key if prefix else chosen_key
    prompt = render_prompt(tokenizer, prefix + chosen[:-1], row, field, problems)
    return prompt, chosen_response, rejected_response


def _check_distinct(
    pairs: _Pairs, rejected_key: str, chosen_key: str, problems: ProblemCollector
) -> None:
    for row, (chosen, rejected) in enumerate(zip(pairs.chosen, pairs.rejected, strict=True)):
        if chosen is not None and chosen == rejected:
            message = f"identical to {chosen_key!r}; a pair needs two different responses"
            problems.add(row, rejected_key, message)
