"""Data loaders: sources, prompt / preference / SFT validation, tokenization."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ray_rlhf.data import (
    DataValidationError,
    EncodedExample,
    ProblemCollector,
    encode_prompt_response,
    encode_prompts,
    load_preferences,
    load_prompts,
    load_sft,
    open_dataset,
    pad_batch,
)

WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>"]
WORDS += ["hello", "world", "sort", "a", "b", "c", "yes", "no", "be", "brief"]
VOCAB = {word: index for index, word in enumerate(WORDS)}
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer(*, chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """Word-level tokenizer that prepends <bos> when adding special tokens."""
    core = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", VOCAB["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def assert_names(
    error: DataValidationError, source: Path | str, row: int | None, field: str | None, text: str
) -> None:
    """The first problem is at source / row / field, and the message says so."""
    assert (error.source, error.row, error.field) == (str(source), row, field)
    where = str(source)
    where += "" if row is None else f" row {row}"
    where += "" if field is None else f", field {field!r}"
    assert f"{where}: " in str(error)
    assert text in str(error)


# ---------------------------------------------------------------- errors


def test_error_renders_source_row_and_field() -> None:
    error = DataValidationError("prefs.jsonl", "empty text", row=3, field="chosen")
    assert str(error) == "prefs.jsonl row 3, field 'chosen': empty text"
    assert isinstance(error, ValueError)


def test_collector_lists_limit_and_counts_the_rest() -> None:
    problems = ProblemCollector("p.jsonl", limit=10)
    for row in range(12):
        problems.add(row, "prompt", "empty text")
    with pytest.raises(DataValidationError) as caught:
        problems.raise_if_any()
    error = caught.value
    assert len(problems) == 12 and len(error.problems) == 10 and error.omitted == 2
    assert str(error).startswith("12 data problems:")
    assert "p.jsonl row 9, field 'prompt': empty text" in str(error)
    assert "row 10," not in str(error) and str(error).endswith("... and 2 more")


def test_error_survives_pickling() -> None:
    problems = ProblemCollector("p.jsonl", limit=1)
    problems.add(4, "id", "duplicate id '7'")
    problems.add(5, "id", "duplicate id '8'")
    with pytest.raises(DataValidationError) as caught:
        problems.raise_if_any()
    restored = pickle.loads(pickle.dumps(caught.value))
    assert str(restored) == str(caught.value)
    assert (restored.source, restored.row, restored.field, restored.omitted) == (
        "p.jsonl",
        4,
        "id",
        1,
    )


# ---------------------------------------------------------------- sources

ROWS = [{"prompt": "hello world", "domain": "x"}, {"prompt": "sort a b", "domain": "y"}]


def _write_format(tmp_path: Path, kind: str) -> Path:
    if kind == "jsonl":
        return write_jsonl(tmp_path / "p.jsonl", ROWS)
    if kind == "json-array":
        (tmp_path / "p.json").write_text(json.dumps(ROWS, indent=2))
        return tmp_path / "p.json"
    if kind == "json-lines":
        return write_jsonl(tmp_path / "p.json", ROWS)
    datasets.Dataset.from_list(ROWS).to_parquet(tmp_path / "p.parquet")
    return tmp_path / "p.parquet"


@pytest.mark.parametrize("kind", ["jsonl", "json-array", "json-lines", "parquet"])
def test_open_dataset_reads_each_file_type(tmp_path: Path, kind: str) -> None:
    path = _write_format(tmp_path, kind)
    dataset, name = open_dataset(path)
    assert name == str(path)
    assert dataset.to_list() == ROWS


def test_open_dataset_directory_concatenates_in_name_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    (tmp_path / ".hidden").write_text("ignored")
    dataset, name = open_dataset(str(tmp_path))
    assert name == str(tmp_path)
    assert dataset["prompt"][:] == ["hello world", "sort a b"]


def test_open_dataset_passes_in_memory_dataset_through() -> None:
    source = datasets.Dataset.from_list(ROWS)
    dataset, name = open_dataset(source)
    assert dataset is source and name == "<in-memory Dataset>"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataValidationError) as caught:
        open_dataset(str(path))
    assert_names(caught.value, path, None, None, "file not found")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt\nhello\n")
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, None, None, "unsupported file type '.csv'")


def test_corrupt_jsonl_names_each_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"\n[1, 2]\n')
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, 1, None, "line 3: invalid JSON")
    assert f"{path} row 2: line 4: expected a JSON object, got array" in str(caught.value)


def test_corrupt_json_array(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, None, None, "invalid JSON at line 2")


def test_json_object_instead_of_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"data": ROWS}, indent=1))
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, None, None, "single object with keys ['data']")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, None, None, "unreadable or corrupt parquet file")


def test_file_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n")
    with pytest.raises(DataValidationError) as caught:
        open_dataset(path)
    assert_names(caught.value, path, None, None, "dataset has no rows")


def test_directory_with_other_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "README.md").write_text("# data")
    with pytest.raises(DataValidationError) as caught:
        open_dataset(tmp_path)
    assert_names(caught.value, tmp_path, None, None, "found README.md")


def test_directory_with_different_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "a"}])
    with pytest.raises(DataValidationError) as caught:
        open_dataset(tmp_path)
    assert_names(caught.value, tmp_path / "b.jsonl", None, None, "missing ['domain']")


def test_directory_with_different_column_types(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "prompt": "a"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "prompt": "b"}])
    with pytest.raises(DataValidationError) as caught:
        open_dataset(tmp_path)
    assert_names(caught.value, tmp_path / "b.jsonl", None, None, "column types differ")


def test_hub_name_fails_clearly_offline() -> None:
    with pytest.raises(DataValidationError) as caught:
        open_dataset("some-org/some-prompts")
    assert_names(caught.value, "some-org/some-prompts", None, None, "offline mode")


def test_dataset_dict_is_rejected() -> None:
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    with pytest.raises(DataValidationError, match=r"dataset_dict\['train'\]"):
        open_dataset(splits)


# ---------------------------------------------------------------- prompts


def test_load_prompts_plain_keeps_extra_columns_and_str_ids(tmp_path: Path) -> None:
    rows = [{"id": 7, "prompt": "hello", "domain": "x"}, {"id": 8, "prompt": "sort", "domain": "y"}]
    prompts = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows))
    assert prompts.column_names == ["id", "prompt", "user_prompt", "domain"]
    assert prompts.to_list() == [
        {"id": "7", "prompt": "hello", "user_prompt": "hello", "domain": "x"},
        {"id": "8", "prompt": "sort", "user_prompt": "sort", "domain": "y"},
    ]


def test_generated_ids_are_sha1_prefix_with_occurrence_index(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    digest = {text: hashlib.sha1(text.encode()).hexdigest()[:16] for text in "ab"}
    ids = load_prompts(path)["id"][:]
    assert ids == [f"{digest['a']}-0", f"{digest['b']}-0", f"{digest['a']}-1"]
    assert load_prompts(str(path))["id"][:] == ids


def test_load_prompts_chat_layout_renders_template(tokenizer: PreTrainedTokenizerFast) -> None:
    conversation = [{"role": "system", "content": "be brief"}, user("hello")]
    source = datasets.Dataset.from_list([{"messages": conversation, "domain": "x"}])
    prompts = load_prompts(source, tokenizer=tokenizer)
    assert prompts.column_names == ["id", "prompt", "user_prompt", "domain"]
    assert prompts[0]["prompt"] == "<system> be brief <user> hello <assistant> "
    assert prompts[0]["user_prompt"] == "hello"  # the last user message, for rule rewards


# Plain-text prompts and `data.chat_template`: auto renders them when the tokenizer has a
# template, always insists on one, never leaves them as written.
PLAIN_RENDERED = "<user> hello <assistant> "


@pytest.mark.parametrize(
    ("mode", "has_template", "expected"),
    [
        ("auto", True, PLAIN_RENDERED),
        ("auto", False, "hello"),
        ("always", True, PLAIN_RENDERED),
        ("never", True, "hello"),
        ("never", False, "hello"),
    ],
)
def test_plain_prompts_follow_the_chat_template_mode(
    tmp_path: Path, mode: str, has_template: bool, expected: str
) -> None:
    tokenizer = make_tokenizer(chat_template=CHAT_TEMPLATE if has_template else None)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    prompts = load_prompts(path, tokenizer=tokenizer, chat_template=mode)
    assert prompts[0]["prompt"] == expected
    assert prompts[0]["user_prompt"] == "hello"
    sft = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "hello", "response": "yes"}])
    assert load_sft(sft, tokenizer=tokenizer, chat_template=mode)[0]["prompt"] == expected
    pair = {"prompt": "hello", "chosen": "yes", "rejected": "no"}
    pairs = write_jsonl(tmp_path / "r.jsonl", [pair])
    assert load_preferences(pairs, tokenizer=tokenizer, chat_template=mode)[0]["prompt"] == expected


def test_rendered_plain_prompts_count_their_template_tokens(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    tokenizer = make_tokenizer()
    assert load_prompts(path, tokenizer=tokenizer, max_prompt_tokens=3).num_rows == 1
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, tokenizer=tokenizer, max_prompt_tokens=2)
    assert "3 tokens, more than max_prompt_tokens=2" in str(caught.value)
    assert load_prompts(path, tokenizer=tokenizer, max_prompt_tokens=1, chat_template="never")


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_always_without_a_template_names_the_key(tmp_path: Path, with_tokenizer: bool) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    tokenizer = make_tokenizer(chat_template=None) if with_tokenizer else None
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, tokenizer=tokenizer, chat_template="always")
    assert "data.chat_template is 'always', which needs a tokenizer with a chat template" in str(
        caught.value
    )


def test_load_prompts_from_directory_names_the_file_of_a_bad_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "c"}, {"prompt": ""}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(tmp_path)
    assert_names(caught.value, tmp_path / "b.jsonl", 1, "prompt", "empty text")


def test_missing_prompt_column_lists_layouts_and_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "hello", "domain": "x"}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path)
    message = str(caught.value)
    assert "missing column 'prompt'" in message and "chat (column 'messages'" in message
    assert "found columns: 'question', 'domain'" in message
    assert caught.value.source == str(path) and caught.value.field == "prompt"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", "empty text"),
        ("   \n", "whitespace-only text"),
        (None, "missing (null) text"),
        (5, "expected a string, got int"),
    ],
)
def test_bad_prompt_text(tmp_path: Path, value: object, text: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"prompt": value}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path)
    assert_names(caught.value, path, 1, "prompt", text)


def test_prompt_key_missing_in_some_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"text": "hello"}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path)
    assert_names(caught.value, path, 1, "prompt", "missing (null) text")


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        ([{"role": "bot", "content": "hi"}], "message 0: role 'bot' is not one of"),
        ([user("hi"), {"role": "user"}], "message 1: content: missing (null) text"),
        ("hello", "expected a list of messages, got str"),
        ([], "empty message list"),
        ([user("hi"), assistant("yes")], "prompt must end with a user message, not 'assistant'"),
    ],
)
def test_bad_messages(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, messages: object, text: str
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [user("a")]}, {"messages": messages}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, tokenizer=tokenizer)
    assert_names(caught.value, path, 1, "messages", text)


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_chat_layout_without_template(tmp_path: Path, with_tokenizer: bool) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [user("hello")]}])
    tokenizer = make_tokenizer(chat_template=None) if with_tokenizer else None
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, tokenizer=tokenizer)
    assert caught.value.field == "messages" and caught.value.source == str(path)
    assert "need a tokenizer with a chat template" in str(caught.value)


def test_over_long_prompt(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a b"}, {"prompt": "a b c"}])
    as_written = {"tokenizer": tokenizer, "chat_template": "never"}
    assert load_prompts(path, max_prompt_tokens=3, **as_written).num_rows == 2
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, max_prompt_tokens=2, **as_written)
    assert_names(caught.value, path, 1, "prompt", "3 tokens, more than max_prompt_tokens=2")


def test_token_limit_needs_tokenizer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="max_prompt_tokens=4 needs a tokenizer"):
        load_prompts(path, max_prompt_tokens=4)


def test_duplicate_ids(tmp_path: Path) -> None:
    rows = [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}, {"id": "x", "prompt": "c"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path)
    assert_names(caught.value, path, 2, "id", f"duplicate id 'x', first seen at {path} row 0")


def test_many_bad_rows_are_reported_together(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""} for _ in range(13)])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path)
    assert len(caught.value.problems) == 10 and caught.value.omitted == 3
    assert str(caught.value).startswith("13 data problems:")


def test_kept_column_may_not_shadow_an_output(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "a", "prompt": "b"}])
    with pytest.raises(DataValidationError) as caught:
        load_prompts(path, prompt_key="question")
    assert_names(caught.value, path, None, "prompt", "would be replaced")


# ---------------------------------------------------------------- preferences

PAIRS = [
    {"prompt": "hello", "chosen": "yes", "rejected": "no", "domain": "x"},
    {"prompt": "sort b a", "chosen": "a b", "rejected": "b a", "domain": "y"},
]


def test_load_preferences_plain(tmp_path: Path) -> None:
    pairs = load_preferences(write_jsonl(tmp_path / "prefs.jsonl", PAIRS))
    assert pairs.column_names == ["id", "prompt", "chosen", "rejected", "domain"]
    assert [row["chosen"] for row in pairs] == ["yes", "a b"]


def test_load_preferences_chat_with_shared_history(tokenizer: PreTrainedTokenizerFast) -> None:
    history = [user("hello"), assistant("yes"), user("sort b a")]
    row = {"chosen": [*history, assistant("a b")], "rejected": [*history, assistant("b a")]}
    pairs = load_preferences(datasets.Dataset.from_list([row]), tokenizer=tokenizer)
    assert pairs[0]["prompt"] == "<user> hello <assistant> yes <user> sort b a <assistant> "
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a b", "b a")


def test_load_preferences_chat_with_prompt_messages(tokenizer: PreTrainedTokenizerFast) -> None:
    row = {"prompt": [user("hello")], "chosen": [assistant("yes")], "rejected": [assistant("no")]}
    pairs = load_preferences(datasets.Dataset.from_list([row]), tokenizer=tokenizer)
    assert pairs[0]["prompt"] == "<user> hello <assistant> "
    assert pairs.column_names == ["id", "prompt", "chosen", "rejected"]


def test_preferences_missing_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path)
    assert_names(caught.value, path, None, "rejected", "missing column 'rejected'")
    assert "found columns: 'prompt', 'chosen'" in str(caught.value)


def test_preferences_identical_responses(tmp_path: Path) -> None:
    rows = [*PAIRS, {"prompt": "hello", "chosen": "yes", "rejected": "yes"}]
    path = write_jsonl(tmp_path / "prefs.jsonl", [{**row, "domain": "x"} for row in rows])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path)
    assert_names(caught.value, path, 2, "rejected", "identical to 'chosen'")


def test_preferences_empty_chosen(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": " ", "rejected": "b"}])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path)
    assert_names(caught.value, path, 0, "chosen", "whitespace-only text")


def test_preferences_chat_prompts_must_match(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    row = {"chosen": [user("a"), assistant("yes")], "rejected": [user("b"), assistant("no")]}
    path = write_jsonl(tmp_path / "prefs.jsonl", [row])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path, tokenizer=tokenizer)
    assert_names(caught.value, path, 0, "rejected", "differ from those of 'chosen'")


def test_preferences_chat_response_must_be_assistant(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    row = {"chosen": [user("a"), assistant("yes")], "rejected": [assistant("no"), user("a")]}
    path = write_jsonl(tmp_path / "prefs.jsonl", [row])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path, tokenizer=tokenizer)
    assert_names(caught.value, path, 0, "rejected", "must be the assistant response, not 'user'")


def test_preferences_text_prompt_with_chat_responses(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    row = {
        "prompt": "a",
        "chosen": [user("a"), assistant("y")],
        "rejected": [user("a"), assistant("n")],
    }
    path = write_jsonl(tmp_path / "prefs.jsonl", [row])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path, tokenizer=tokenizer)
    assert_names(
        caught.value, path, None, "prompt", "holds text while 'chosen' holds conversations"
    )


def test_preferences_over_long_response_and_prompt(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", PAIRS)
    with pytest.raises(DataValidationError) as caught:
        load_preferences(
            path,
            tokenizer=tokenizer,
            max_prompt_tokens=2,
            max_response_tokens=1,
            chat_template="never",
        )
    problems = [(p.row, p.field, p.message) for p in caught.value.problems]
    assert problems == [
        (1, "prompt", "3 tokens, more than max_prompt_tokens=2"),
        (1, "chosen", "2 tokens, more than max_response_tokens=1"),
        (1, "rejected", "2 tokens, more than max_response_tokens=1"),
    ]


def test_preferences_duplicate_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [{**row, "id": 1} for row in PAIRS])
    with pytest.raises(DataValidationError) as caught:
        load_preferences(path)
    assert_names(caught.value, path, 1, "id", "duplicate id '1'")


# ---------------------------------------------------------------- sft


def test_load_sft_plain_parquet(tmp_path: Path) -> None:
    path = tmp_path / "sft.parquet"
    datasets.Dataset.from_list(
        [{"prompt": "sort b a", "response": "a b", "domain": "x"}]
    ).to_parquet(path)
    rows = load_sft(path)
    assert rows.column_names == ["id", "prompt", "response", "domain"]
    assert (rows[0]["prompt"], rows[0]["response"]) == ("sort b a", "a b")


def test_load_sft_chat_multi_turn(tokenizer: PreTrainedTokenizerFast) -> None:
    messages = [user("hello"), assistant("yes"), user("sort b a"), assistant("a b")]
    rows = load_sft(datasets.Dataset.from_list([{"messages": messages}]), tokenizer=tokenizer)
    assert rows[0]["prompt"] == "<user> hello <assistant> yes <user> sort b a <assistant> "
    assert rows[0]["response"] == "a b"


def test_sft_missing_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataValidationError) as caught:
        load_sft(path)
    assert_names(caught.value, path, None, "response", "missing column 'response'")
    assert "chat (column 'messages'" in str(caught.value)


def test_sft_chat_must_end_with_assistant(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    rows = [{"messages": [user("a"), assistant("b")]}, {"messages": [user("a")]}]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(DataValidationError) as caught:
        load_sft(path, tokenizer=tokenizer)
    assert_names(caught.value, path, 1, "messages", "must be the assistant response, not 'user'")


def test_sft_empty_and_over_long_response(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    rows = [{"prompt": "a", "response": ""}, {"prompt": "a", "response": "a b c"}]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(DataValidationError) as caught:
        load_sft(path, tokenizer=tokenizer, max_response_tokens=2)
    assert_names(caught.value, path, 0, "response", "empty text")
    second = caught.value.problems[1]
    assert (second.row, second.field) == (1, "response")
    assert second.message == "3 tokens, more than max_response_tokens=2"


# ---------------------------------------------------------------- tokenize


def test_encode_prompt_response_by_hand(tokenizer: PreTrainedTokenizerFast) -> None:
    example = encode_prompt_response(tokenizer, "sort b a", "a b")
    bos, eos = VOCAB["<bos>"], VOCAB["<eos>"]
    assert example.input_ids == [
        bos,
        VOCAB["sort"],
        VOCAB["b"],
        VOCAB["a"],
        VOCAB["a"],
        VOCAB["b"],
        eos,
    ]
    assert example.response_mask == [False, False, False, False, True, True, True]
    assert encode_prompts(tokenizer, ["sort b a"]) == [example.input_ids[:4]]


def test_encode_prompt_response_refuses_over_max_length(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    with pytest.raises(ValueError, match=r"7 tokens \(4 prompt \+ 3 response incl. EOS\)"):
        encode_prompt_response(tokenizer, "sort b a", "a b", max_length=6)
    assert len(encode_prompt_response(tokenizer, "sort b a", "a b", max_length=7).input_ids) == 7


def test_pad_batch_right_and_left() -> None:
    long = EncodedExample([1, 2, 3], [False, True, True])
    short = EncodedExample([4, 5], [False, True])
    right = pad_batch([long, short], pad_id=0)
    assert right["input_ids"].dtype == torch.long
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert right["attention_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert right["response_mask"].tolist() == [[False, True, True], [False, True, False]]
    left = pad_batch([long, short], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 4, 5]]
    assert left["attention_mask"].tolist() == [[True, True, True], [False, True, True]]
    assert left["response_mask"].tolist() == [[False, True, True], [False, False, True]]
    assert left["attention_mask"].dtype == left["response_mask"].dtype == torch.bool


def test_pad_batch_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        pad_batch([], pad_id=0)
    with pytest.raises(ValueError, match="example 0: 2 input ids but 1 mask values"):
        pad_batch([EncodedExample([1, 2], [True])], pad_id=0)
