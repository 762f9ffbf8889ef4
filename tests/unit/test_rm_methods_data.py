"""Data plumbing of the RM methods: cross-prompt rows, ensemble outputs, strength columns."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from ray_rlhf.algo.tokens import join_prompts_and_responses
from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.data.toyworld.splits import restyle_pair
from ray_rlhf.data.toyworld.tasks import Task, true_reward
from ray_rlhf.loops.rm import check_pair_columns
from ray_rlhf.loops.strength import flip_detection, read_member_margins


def test_join_takes_one_rows_prompt_and_anothers_response():
    # Row 0: prompt [1 2], response [3 4]; row 1: prompt [5], response [6 7 8]; 0 = pad.
    ids = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 7, 8, 0]])
    attention = ids > 0
    response = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    out = join_prompts_and_responses(
        ids, attention, response, torch.tensor([1, 0, 0]), torch.tensor([0, 1, 0]), pad_id=9
    )
    assert out["input_ids"].tolist() == [[5, 3, 4, 9, 9], [1, 2, 6, 7, 8], [1, 2, 3, 4, 9]]
    assert out["attention_mask"].sum(1).tolist() == [3, 5, 4]
    assert out["response_mask"].tolist()[0] == [False, True, True, False, False]


def _write_member(tmp_path, ids, margins, name="member_00.parquet"):
    path = tmp_path / name
    Dataset.from_dict({"id": ids, "margin": margins}).to_parquet(str(path))
    return path


def test_member_margins_are_aligned_to_the_dataset_order(tmp_path):
    path = _write_member(tmp_path, ["b", "a", "c"], [2.0, 1.0, 3.0])
    assert read_member_margins(path, ["a", "b", "c"]).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("ids", "margins", "message"),
    [
        (["a", "b", "x"], [1.0, 2.0, 3.0], r"do not match.*1 missing, first \['c'\].*\['x'\]"),
        (["a", "b"], [1.0, 2.0], r"1 missing, first \['c'\]"),
        (["a", "a", "b", "c"], [1.0, 1.0, 2.0, 3.0], "duplicate pair ids"),
        (["a", "b", "c"], [1.0, float("nan"), 3.0], "margin of pair 'b' is not finite"),
    ],
)
def test_member_outputs_that_do_not_match_the_dataset_are_errors(tmp_path, ids, margins, message):
    path = _write_member(tmp_path, ids, margins)
    with pytest.raises(ValueError, match=message) as err:
        read_member_margins(path, ["a", "b", "c"])
    assert str(path) in str(err.value)


def test_member_file_without_margin_column_names_it(tmp_path):
    path = tmp_path / "m.parquet"
    Dataset.from_dict({"id": ["a"], "score": [1.0]}).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"m.parquet: missing column\(s\) \['margin'\]"):
        read_member_margins(path, ["a"])


def test_flip_detection_by_hand():
    mu = torch.tensor([-1.0, -0.5, 0.2, 1.0])
    flipped = torch.tensor([True, False, True, False])
    assert flip_detection(mu, flipped) == {"precision": 0.5, "recall": 0.5}


def test_strength_losses_need_a_finite_strength_column():
    cfg = load_config(None, ["rm.loss=flip"])
    data = Dataset.from_dict({"id": ["a", "b"], "prompt": ["p", "q"]})
    with pytest.raises(ValueError, match=r"pairs.jsonl: rm.loss='flip' needs a 'strength'"):
        check_pair_columns(data, cfg, "pairs.jsonl")
    data = data.add_column("strength", [0.5, float("inf")])
    with pytest.raises(ValueError, match=r"pairs.jsonl row 1, field 'strength': id 'b': inf, not"):
        check_pair_columns(data, cfg, "pairs.jsonl")
    check_pair_columns(data, load_config(None, ["rm.loss=smoothing", "rm.label_smoothing=0.1"]), "")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rm.loss=smoothing"], "rm.label_smoothing: must be > 0 with loss 'smoothing'"),
        (["rm.loss=margin", "rm.margin=true"], "rm.margin: a dataset margin column"),
        (["rm.prioritized=true", "rm.head=per_position"], "rm.prioritized: is implemented"),
        (["rm.loss=flop"], "rm.loss"),
        (["rm.prioritized_alpha=1.5"], "rm.prioritized_alpha: must be in"),
        (["reward.prompt_free_prompts=-1"], "reward.prompt_free_prompts"),
    ],
)
def test_rm_method_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_restyle_puts_the_style_token_on_one_response_by_quality():
    task = Task("sort", (3, 1, 2))
    pair = ("1 2 3 !", "1 3 3 !")  # true rewards 1 and 2/3: the second is worse
    always_worse = restyle_pair(random.Random(0), task, pair, 1.0, "!")
    never_worse = restyle_pair(random.Random(0), task, pair, 0.0, "!")
    assert always_worse == ("1 2 3", "1 3 3 !")
    assert never_worse == ("1 2 3 !", "1 3 3")
    prompt = "sort 3 1 2 ="
    assert [true_reward(prompt, y) for y in always_worse] == [1.0, pytest.approx(2 / 3)]
