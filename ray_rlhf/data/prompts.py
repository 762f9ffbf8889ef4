"""Prompt datasets, and the row checks that preference and SFT datasets share.

A prompt is either text (plain layout) or a conversation: a list of {"role", "content"}
messages with roles system / user / assistant, rendered with the tokenizer's chat template
and `add_generation_prompt=True`. A prompt conversation must end with a user message.
Plain text is rendered too, as one user message, when `chat_template` says so
(`data.chat_template`: `auto` when the tokenizer has a template, `always`, `never`), so a
chat model sees the format it was tuned on whichever layout the file uses.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import datasets
from jinja2 import TemplateError

from ray_rlhf.data.errors import DataValidationError, ProblemCollector
from ray_rlhf.data.sources import DataSource, open_source

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
"""Message roles the loaders accept."""

ChatTemplateMode = Literal["auto", "always", "never"]
"""Whether plain-text prompts get the chat template (`DataConfig.chat_template`)."""

_TOKENIZE_CHUNK = 1024


def load_prompts(
    source: str | Path | datasets.Dataset,
    *,
    split: str = "train",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_tokens: int | None = None,
    prompt_key: str = "prompt",
    messages_key: str = "messages",
    id_key: str = "id",
    chat_template: ChatTemplateMode = "auto",
) -> datasets.Dataset:
    """Loads and validates a prompt dataset.

    Layouts: plain (column `prompt_key` holding text, or conversations) or chat (column
    `messages_key` holding conversations). If both columns exist the plain one is used and
    the other is kept as an extra column.

    Args:
        source: See `ray_rlhf.data.sources.open_dataset`.
        split: Hub split to load; local sources ignore it.
        tokenizer: Renders conversations (needs a chat template) and counts tokens.
        max_prompt_tokens: Longest allowed prompt, counted as the tokenizer encodes it without
            special tokens. Needs `tokenizer`.
        prompt_key: Column of the plain layout.
        messages_key: Column of the chat layout.
        id_key: Column of row ids. Ids are str()-ed and must be unique. Without the column,
            ids are `generated_ids(prompts)`.
        chat_template: Render plain-text prompts with the chat template (see
            `uses_chat_template`).

    Returns:
        Columns `id` (str), `prompt` (str: what the model reads, rendered where a chat
        template applies), `user_prompt` (str: the prompt as the user wrote it, the text
        of a plain row or the content of a conversation's last user message; rule rewards
        receive it), then every input column the layout did not consume (e.g. `domain`),
        in input order.

    Raises:
        DataValidationError: Naming file, row and field: missing column, empty / non-string
            prompt, bad conversation, prompt over `max_prompt_tokens`, duplicate id.
        ValueError: `max_prompt_tokens` without a tokenizer.
    """
    check_limits_have_tokenizer(tokenizer, max_prompt_tokens=max_prompt_tokens)
    src = open_source(source, split=split)
    columns = src.dataset.column_names
    if prompt_key in columns:
        prompt_column, chat = prompt_key, None
    elif messages_key in columns:
        prompt_column, chat = messages_key, True
    else:
        raise missing_columns_error(
            src,
            [prompt_key],
            f"plain (column {prompt_key!r}) or chat (column {messages_key!r}: message lists)",
        )
    outputs = ["id", "prompt", "user_prompt"]
    check_no_clash(src, consumed=[prompt_column, id_key], outputs=outputs)
    problems = src.collector()
    prompts = read_prompts(
        src, prompt_column, tokenizer, problems, chat=chat, chat_template=chat_template
    )
    check_token_lengths(tokenizer, prompts, max_prompt_tokens, prompt_column, problems)
    ids = read_ids(src, id_key, prompts, problems)
    problems.raise_if_any()
    users = [user_prompt_text(value) for value in src.dataset[prompt_column]]
    columns = dict(zip(outputs, (ids, prompts, users), strict=True))
    return build_output(src, columns, consumed=[prompt_column, id_key])


def check_limits_have_tokenizer(
    tokenizer: PreTrainedTokenizerBase | None, **limits: int | None
) -> None:
    """Raises ValueError if a token limit is not positive or has no tokenizer to count with."""
    for name, limit in limits.items():
        if limit is not None and tokenizer is None:
            raise ValueError(f"{name}={limit} needs a tokenizer to count tokens")
        if limit is not None and limit <= 0:
            raise ValueError(f"{name} must be positive, got {limit}")


def missing_columns_error(
    src: DataSource, missing: Sequence[str], layouts: str
) -> DataValidationError:
    """Builds the error for absent columns, naming the accepted layouts and found columns."""
    names = ", ".join(repr(name) for name in missing)
    found = ", ".join(repr(name) for name in src.dataset.column_names)
    return DataValidationError(
        src.name,
        f"missing column {names}; accepted layouts: {layouts}; found columns: {found}",
        field=missing[0],
    )


def check_no_clash(src: DataSource, *, consumed: Sequence[str], outputs: Sequence[str]) -> None:
    """Raises if a kept input column has the name of an output column."""
    for column in src.dataset.column_names:
        if column in outputs and column not in consumed:
            raise DataValidationError(
                src.name,
                f"column {column!r} would be replaced by the loader's output column of that "
                "name; rename or drop it",
                field=column,
            )


def read_prompts(
    src: DataSource,
    column: str,
    tokenizer: PreTrainedTokenizerBase | None,
    problems: ProblemCollector,
    *,
    chat: bool | None = None,
    chat_template: ChatTemplateMode = "auto",
) -> list[str | None]:
    """Reads a prompt column as text, or renders it as conversations.

    Args:
        src: The opened source.
        column: Column to read.
        tokenizer: Renders conversations.
        problems: Receives one problem per bad row.
        chat: True for conversations, False for text, None to decide from the first
            non-null value (a list means conversations).
        chat_template: Whether text is rendered as one user message with the chat
            template (`uses_chat_template`); conversations always are.

    Returns:
        One prompt per row; None where the row has a problem.

    Raises:
        DataValidationError: Conversations, or text under `chat_template="always"`,
            without a tokenizer that has a chat template.
    """
    values = list(src.dataset[column])
    if chat is None:
        chat = holds_conversations(values)
    if not chat:
        texts = [text_or_none(value, row, column, problems) for row, value in enumerate(values)]
        if chat_template == "always":
            need = "holds text prompts and data.chat_template is 'always', which needs"
            require_chat_template(src, tokenizer, column, need=need)
        if not uses_chat_template(tokenizer, chat_template):
            return texts
        return [
            render_prompt(tokenizer, user_turn(text), row, column, problems) if text else None
            for row, text in enumerate(texts)
        ]
    require_chat_template(src, tokenizer, column)
    prompts: list[str | None] = []
    for row, value in enumerate(values):
        messages = messages_or_none(value, row, column, problems)
        if messages is not None:
            prompts.append(render_prompt(tokenizer, messages, row, column, problems))
        else:
            prompts.append(None)
    return prompts


def uses_chat_template(tokenizer: PreTrainedTokenizerBase | None, mode: ChatTemplateMode) -> bool:
    """Whether plain-text prompts are rendered with the chat template under `mode`:
    `always`, or `auto` with a tokenizer that has a template (`never`: not)."""
    has_template = tokenizer is not None and tokenizer.chat_template is not None
    return mode == "always" or (mode == "auto" and has_template)


def user_turn(text: str) -> list[dict[str, Any]]:
    """A plain-text prompt as the conversation the chat template renders: one user message."""
    return [{"role": "user", "content": text}]


def user_prompt_text(value: object) -> str | None:
    """The prompt as the user wrote it: text as is, a conversation's last user message
    content; None for anything else (the loaders report those rows)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, Mapping) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else None
    return None


def holds_conversations(values: Sequence[Any]) -> bool:
    """Says whether the first non-null value is a list (a conversation)."""
    return isinstance(next((value for value in values if value is not None), None), list)


def require_chat_template(
    src: DataSource,
    tokenizer: PreTrainedTokenizerBase | None,
    column: str,
    *,
    need: str = "holds conversations (chat layout), which need",
) -> None:
    """Raises if `column` cannot be rendered for lack of a chat template; the message is
    `<need> a tokenizer with a chat template; <what is missing>`."""
    if tokenizer is None or tokenizer.chat_template is None:
        what = "no tokenizer was given" if tokenizer is None else "the tokenizer has none"
        raise DataValidationError(
            src.name, f"{need} a tokenizer with a chat template; {what}", field=column
        )


def text_or_none(value: object, row: int, field: str, problems: ProblemCollector) -> str | None:
    """Returns `value` if it is non-blank text; otherwise records a problem and returns None."""
    problem = check_text(value)
    if problem is not None:
        problems.add(row, field, problem)
        return None
    return str(value)


def check_text(value: object) -> str | None:
    """Returns what is wrong with a text value, or None if it is a non-blank string."""
    if value is None:
        return "missing (null) text"
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value.strip():
        return "empty text" if not value else "whitespace-only text"
    return None


def messages_or_none(
    value: object, row: int, field: str, problems: ProblemCollector
) -> list[dict[str, Any]] | None:
    """Returns a well-formed conversation without null keys, or records a problem."""
    problem = check_messages(value)
    if problem is not None:
        problems.add(row, field, problem)
        return None
    # Arrow gives every message every key seen in the column, as None where absent.
    messages = cast(list[Mapping[str, Any]], value)
    return [{k: v for k, v in message.items() if v is not None} for message in messages]


def check_messages(value: object) -> str | None:
    """Returns what is wrong with a conversation, or None.

    A conversation is a non-empty list of {"role", "content"} mappings; role is one of
    `ROLES`, content is non-blank text.
    """
    if not isinstance(value, list):
        return f"expected a list of messages, got {type(value).__name__}"
    if not value:
        return "empty message list"
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            kind = type(message).__name__
            return f"message {index}: expected a mapping with role and content, got {kind}"
        if message.get("role") not in ROLES:
            role = message.get("role")
            return f"message {index}: role {role!r} is not one of {', '.join(ROLES)}"
        problem = check_text(message.get("content"))
        if problem is not None:
            return f"message {index}: content: {problem}"
    return None


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    row: int,
    field: str,
    problems: ProblemCollector,
) -> str | None:
    """Renders a prompt conversation (ending with a user message) for generation.

    Returns:
        `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`, or None
        after recording a problem.
    """
    if not messages:
        problems.add(row, field, "no prompt messages before the response")
        return None
    role = messages[-1]["role"]
    if role != "user":
        problems.add(row, field, f"prompt must end with a user message, not {role!r}")
        return None
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as err:
        problems.add(row, field, f"chat template failed: {err}")
        return None


def final_response(
    messages: list[dict[str, Any]], row: int, field: str, problems: ProblemCollector
) -> str | None:
    """Returns the content of the last message if it is the assistant's, else records a problem."""
    role = messages[-1]["role"]
    if role != "assistant":
        problems.add(row, field, f"last message must be the assistant response, not {role!r}")
        return None
    return messages[-1]["content"]


def check_token_lengths(
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Sequence[str | None],
    limit: int | None,
    field: str,
    problems: ProblemCollector,
    *,
    limit_name: str = "max_prompt_tokens",
) -> None:
    """Records a problem for each text longer than `limit` tokens (special tokens excluded)."""
    if limit is None or tokenizer is None:
        return
    for row, count in enumerate(count_tokens(tokenizer, texts)):
        if count is not None and count > limit:
            problems.add(row, field, f"{count} tokens, more than {limit_name}={limit}")


def count_tokens(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | None]
) -> list[int | None]:
    """Tokens of each text as the length limits count them (special tokens excluded).

    Returns:
        One count per text; None where the text is None.
    """
    counts: list[int | None] = [None] * len(texts)
    rows = [row for row, text in enumerate(texts) if text is not None]
    for start in range(0, len(rows), _TOKENIZE_CHUNK):
        chunk = rows[start : start + _TOKENIZE_CHUNK]
        encoded = tokenizer([texts[row] for row in chunk], add_special_tokens=False)["input_ids"]
        for row, ids in zip(chunk, encoded, strict=True):
            counts[row] = len(ids)
    return counts


def read_ids(
    src: DataSource, id_key: str, prompts: Sequence[str | None], problems: ProblemCollector
) -> list[str]:
    """Reads ids from `id_key` (str()-ed, unique) or generates them from the prompts."""
    if id_key not in src.dataset.column_names:
        return generated_ids([prompt or "" for prompt in prompts])
    ids: list[str] = []
    first_row: dict[str, int] = {}
    for row, value in enumerate(src.dataset[id_key]):
        if value is None:
            problems.add(row, id_key, "missing (null) id")
        elif isinstance(value, bool) or not isinstance(value, str | int):
            problems.add(row, id_key, f"expected a string or integer id, got {value!r}")
        elif not str(value).strip():
            problems.add(row, id_key, "empty id")
        elif str(value) in first_row:
            where = src.describe(first_row[str(value)])
            problems.add(row, id_key, f"duplicate id {str(value)!r}, first seen at {where}")
        else:
            first_row[str(value)] = row
        ids.append(str(value))
    return ids


def generated_ids(prompts: Sequence[str]) -> list[str]:
    """Makes stable ids: first 16 hex of sha1(prompt), "-k" for the k-th identical prompt.

    Example: two rows with the same prompt get "3f2a...-0" and "3f2a...-1".
    """
    seen: Counter[str] = Counter()
    ids = []
    for prompt in prompts:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]
        ids.append(f"{digest}-{seen[digest]}")
        seen[digest] += 1
    return ids


def build_output(
    src: DataSource, columns: Mapping[str, Sequence[str | None]], *, consumed: Sequence[str]
) -> datasets.Dataset:
    """Returns the output columns followed by every input column not in `consumed`."""
    kept = [column for column in src.dataset.column_names if column not in consumed]
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    new = datasets.Dataset.from_dict(dict(columns), features=features)
    return datasets.concatenate_datasets([new, src.dataset.select_columns(kept)], axis=1)
