"""MetaRM's meta-response input (`data.meta_responses_path`): validation and tokenization."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from test_data import assert_names, make_tokenizer, user, write_jsonl

from ray_rlhf.data import DataValidationError, load_meta_responses


def test_keeps_the_first_k_responses_and_extra_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"prompt": "sort a b", "responses": ["a", "b", "c"], "domain": "x"},
            {"prompt": "hello", "responses": ["yes", "no"], "domain": "y"},
        ],
    )
    data = load_meta_responses(path, k=2)
    assert data.column_names == ["id", "prompt", "responses", "domain"]
    assert data["responses"] == [["a", "b"], ["yes", "no"]]
    assert data["domain"] == ["x", "y"]


def test_reads_a_baselines_parquet_as_is(tmp_path: Path) -> None:
    path = tmp_path / "baselines.parquet"
    datasets.Dataset.from_dict(
        {
            "prompt_id": ["p0", "p1"],
            "prompt": ["hello", "sort a b"],
            "rewards": [[0.1, 0.2], [0.3, 0.4]],
            "responses": [["yes", "no"], ["a b", "b a"]],
        }
    ).to_parquet(str(path))
    data = load_meta_responses(path, k=2)
    assert data["prompt_id"] == ["p0", "p1"] and data["responses"][1] == ["a b", "b a"]


def test_renders_conversation_prompts() -> None:
    source = datasets.Dataset.from_list([{"prompt": [user("hello")], "responses": ["a", "b"]}])
    data = load_meta_responses(source, k=2, tokenizer=make_tokenizer())
    assert data["prompt"] == ["<user> hello <assistant> "]


@pytest.mark.parametrize(
    ("row", "field", "text"),
    [
        ({"prompt": "hello", "responses": ["a"]}, "responses", "1 responses; rm.meta.k=2"),
        ({"prompt": "hello", "responses": "a b"}, "responses", "expected a list of response"),
        ({"prompt": "hello", "responses": ["a", ""]}, "responses[1]", "empty text"),
        ({"prompt": "hello", "responses": [3, "a"]}, "responses[0]", "expected a string"),
        ({"prompt": "", "responses": ["a", "b"]}, "prompt", "empty text"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, row: dict, field: str, text: str):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "hi", "responses": ["a", "b"]}, row])
    with pytest.raises(DataValidationError) as caught:
        load_meta_responses(path, k=2)
    assert_names(caught.value, path, 1, field, text)


def test_missing_column_and_over_long_response(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "hello", "samples": ["a", "b"]}])
    with pytest.raises(DataValidationError, match="missing column 'responses'"):
        load_meta_responses(path, k=2)
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "hello", "responses": ["a", "a b c"]}])
    with pytest.raises(DataValidationError) as caught:
        load_meta_responses(path, k=2, tokenizer=make_tokenizer(), max_response_tokens=2)
    assert_names(caught.value, path, 0, "responses[1]", "more than max_response_tokens=2")


def test_tokenized_rows_are_prompt_major() -> None:
    from ray_rlhf.learner.rm import meta_batch
    from ray_rlhf.loops.rm import tokenize_meta_responses

    tokenizer = make_tokenizer()
    source = datasets.Dataset.from_list(
        [
            {"prompt": "hello", "responses": ["a", "b c"]},
            {"prompt": "sort", "responses": ["yes", "no"]},
        ]
    )
    data = load_meta_responses(source, k=2, tokenizer=tokenizer)
    rows = tokenize_meta_responses(data, tokenizer, max_length=16)
    assert rows["input_ids"].shape[0] == 4
    real = zip(rows["input_ids"], rows["attention_mask"], strict=True)
    texts = [tokenizer.decode(ids[mask]) for ids, mask in real]
    assert texts[1].split()[-3:] == ["b", "c", "<eos>"] and "sort" in texts[2]
    picked = meta_batch(rows, torch.tensor([1]), k=2)  # prompt 1: rows 2, 3, trimmed
    assert torch.equal(picked["input_ids"], rows["input_ids"][2:4, : picked["input_ids"].shape[1]])
    assert picked["attention_mask"].sum(1).max() == picked["input_ids"].shape[1]
