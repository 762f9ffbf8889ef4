"""Meta responses for MetaRM: prompts with k unlabeled policy samples each.

One row per prompt: `prompt` (text, or a conversation rendered with the chat template) and
`responses`, a list of at least k response texts. The offline baselines job (`ray-rlhf
sample-baselines`, columns `prompt_id`, `prompt`, `responses`, ...) writes this layout, so
its output can be used as is: it holds samples of the policy it was run with. Its prompts
are the text the policy read (already chat-templated), so text prompts here are used as
written whatever `data.chat_template` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import datasets

from ray_rlhf.data.errors import ProblemCollector
from ray_rlhf.data.prompts import (
    build_output,
    check_limits_have_tokenizer,
    check_no_clash,
    check_text,
    check_token_lengths,
    missing_columns_error,
    read_ids,
    read_prompts,
)
from ray_rlhf.data.sources import open_source

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase


def load_meta_responses(
    source: str | Path | datasets.Dataset,
    *,
    k: int,
    split: str = "train",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    prompt_key: str = "prompt",
    responses_key: str = "responses",
    id_key: str = "id",
) -> datasets.Dataset:
    """Loads and validates a meta-response dataset, keeping the first `k` responses per row.

    Args:
        source: See `ray_rlhf.data.sources.open_dataset`.
        k: Responses needed per prompt (`rm.meta.k`); rows with more keep their first k.
        split: Hub split to load; local sources ignore it.
        tokenizer: Renders conversation prompts and counts tokens.
        max_prompt_tokens: Longest allowed prompt in tokens (without special tokens).
        max_response_tokens: Longest allowed response in tokens (without special tokens).
        prompt_key: Prompt column (text or conversations).
        responses_key: Column of response lists.
        id_key: Column of row ids (str()-ed, unique); without it ids are generated from
            the prompt.

    Returns:
        Columns `id`, `prompt` (str), `responses` (list of k str), then every other input
        column.

    Raises:
        DataValidationError: Naming file, row and field: missing column, empty or
            non-string prompt, a `responses` value that is not a list, fewer than `k`
            responses, an empty or non-string response, over-long prompt or response,
            duplicate id.
        ValueError: `k < 1`, or a token limit without a tokenizer.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    check_limits_have_tokenizer(
        tokenizer, max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens
    )
    src = open_source(source, split=split)
    missing = [key for key in (prompt_key, responses_key) if key not in src.dataset.column_names]
    if missing:
        raise missing_columns_error(
            src, missing, f"{prompt_key!r} (text) and {responses_key!r} (a list of >= {k} texts)"
        )
    consumed = [prompt_key, responses_key, id_key]
    check_no_clash(src, consumed=consumed, outputs=["id", "prompt", "responses"])
    problems = src.collector()
    prompts = read_prompts(src, prompt_key, tokenizer, problems, chat_template="never")
    responses = _read_responses(src.dataset[responses_key], k, responses_key, problems)
    check_token_lengths(tokenizer, prompts, max_prompt_tokens, prompt_key, problems)
    for j in range(k):
        check_token_lengths(
            tokenizer,
            [None if row is None else row[j] for row in responses],
            max_response_tokens,
            f"{responses_key}[{j}]",
            problems,
            limit_name="max_response_tokens",
        )
    ids = read_ids(src, id_key, prompts, problems)
    problems.raise_if_any()
    out = build_output(src, {"id": ids, "prompt": prompts}, consumed=consumed)
    kept = out.column_names[2:]
    out = out.add_column("responses", responses, feature=datasets.List(datasets.Value("string")))
    return out.select_columns(["id", "prompt", "responses", *kept])


def _read_responses(
    values: list[object], k: int, field: str, problems: ProblemCollector
) -> list[list[str] | None]:
    """The first `k` texts of every row's response list; None where the row has a problem."""
    rows: list[list[str] | None] = []
    for row, value in enumerate(values):
        if not isinstance(value, list):
            problems.add(row, field, f"expected a list of response texts, got {value!r}")
            rows.append(None)
            continue
        if len(value) < k:
            problems.add(row, field, f"{len(value)} responses; rm.meta.k={k} needs at least k")
            rows.append(None)
            continue
        bad = [(j, check_text(text)) for j, text in enumerate(value[:k])]
        bad = [(j, problem) for j, problem in bad if problem is not None]
        if bad:
            j, problem = bad[0]
            problems.add(row, f"{field}[{j}]", problem)
            rows.append(None)
            continue
        rows.append([str(text) for text in value[:k]])
    return rows
