"""SFT datasets: (prompt, response) pairs for supervised warm-starting of the policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import datasets

from ray_rlhf.data.errors import ProblemCollector
from ray_rlhf.data.prompts import (
    ChatTemplateMode,
    build_output,
    check_limits_have_tokenizer,
    check_no_clash,
    check_token_lengths,
    final_response,
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


def load_sft(
    source: str | Path | datasets.Dataset,
    *,
    split: str = "train",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    prompt_key: str = "prompt",
    response_key: str = "response",
    messages_key: str = "messages",
    id_key: str = "id",
    chat_template: ChatTemplateMode = "auto",
) -> datasets.Dataset:
    """Loads and validates an SFT dataset.

    Layouts:
      - plain: `prompt_key` (text, or a conversation rendered with the chat template) and
        `response_key` (text).
      - chat: `messages_key` holds conversations ending with an assistant message, which is
        the response; the messages before it (ending with a user message) are rendered as
        the prompt with `add_generation_prompt=True`. Earlier assistant turns are part of
        the prompt, so they are not trained on.
    If both layouts' columns exist, the plain one is used.

    Args:
        source: See `ray_rlhf.data.sources.open_dataset`.
        split: Hub split to load; local sources ignore it.
        tokenizer: Renders conversations (needs a chat template) and counts tokens.
        max_prompt_tokens: Longest allowed prompt in tokens (without special tokens).
        max_response_tokens: Longest allowed response in tokens (without special tokens; the
            EOS that `encode_prompt_response` appends is not counted).
        prompt_key: Prompt column of the plain layout.
        response_key: Response column of the plain layout.
        messages_key: Conversation column of the chat layout.
        id_key: Column of row ids (str()-ed, unique); without it ids are generated from the
            prompt (see `ray_rlhf.data.prompts.generated_ids`).
        chat_template: Render plain-text prompts with the chat template
            (`ray_rlhf.data.prompts.uses_chat_template`).

    Returns:
        Columns `id`, `prompt`, `response` (str), then every other input column.

    Raises:
        DataValidationError: Naming file, row and field: missing column, empty / non-string
            text, bad conversation, over-long prompt or response, duplicate id.
        ValueError: A token limit without a tokenizer.
    """
    check_limits_have_tokenizer(
        tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens
    )
    src = open_source(source, split=split)
    columns = src.dataset.column_names
    if prompt_key in columns and response_key in columns:
        consumed = [prompt_key, response_key, id_key]
        prompt_field, response_field = prompt_key, response_key
    elif messages_key in columns:
        consumed = [messages_key, id_key]
        prompt_field = response_field = messages_key
    else:
        missing = [key for key in (prompt_key, response_key) if key not in columns]
        layouts = (
            f"plain (columns {prompt_key!r}, {response_key!r}) or chat (column "
            f"{messages_key!r}: message lists ending with the assistant response)"
        )
        raise missing_columns_error(src, missing, layouts)
    check_no_clash(src, consumed=consumed, outputs=["id", "prompt", "response"])

    problems = src.collector()
    if messages_key in consumed:
        prompts, responses = _read_conversations(src, messages_key, tokenizer, problems)
    else:
        prompts = read_prompts(src, prompt_key, tokenizer, problems, chat_template=chat_template)
        responses = [
            text_or_none(value, row, response_key, problems)
            for row, value in enumerate(src.dataset[response_key])
        ]
    check_token_lengths(tokenizer, prompts, max_prompt_tokens, prompt_field, problems)
    check_token_lengths(
        tokenizer,
        responses,
        max_response_tokens,
        response_field,
        problems,
        limit_name="max_response_tokens",
    )
    ids = read_ids(src, id_key, prompts, problems)
    problems.raise_if_any()
    output = {"id": ids, "prompt": prompts, "response": responses}
    return build_output(src, output, consumed=consumed)


def _read_conversations(
    src: DataSource,
    column: str,
    tokenizer: PreTrainedTokenizerBase | None,
    problems: ProblemCollector,
) -> tuple[list[str | None], list[str | None]]:
    """Splits each conversation into (rendered prompt, final assistant content)."""
    require_chat_template(src, tokenizer, column)
    prompts: list[str | None] = []
    responses: list[str | None] = []
    for row, value in enumerate(src.dataset[column]):
        messages = messages_or_none(value, row, column, problems)
        response = None if messages is None else final_response(messages, row, column, problems)
        prompt = None
        if messages is not None and response is not None:
            prompt = render_prompt(tokenizer, messages[:-1], row, column, problems)
        prompts.append(prompt)
        responses.append(response if prompt is not None else None)
    return prompts, responses
