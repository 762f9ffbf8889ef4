"""Unit tests for the toy world: ground truth, annotator, SFT errors, splits, config."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import datasets
import pytest

from ray_rlhf.data.toyworld import (
    DOMAIN_SOLVERS,
    KNOWN_DOMAINS,
    Task,
    ToyWorldConfig,
    ToyWorldSplits,
    annotate_pair,
    build_splits,
    evaluate_responses,
    format_prompt,
    format_response,
    has_style,
    is_test_prompt,
    parse_prompt,
    preference_probability,
    sample_response_pair,
    solve,
    step_rewards,
    true_reward,
    true_rewards,
    vocabulary,
    write_splits,
)
from ray_rlhf.data.toyworld.splits import _draw_tasks

SMALL = ToyWorldConfig(
    n_sft=2000,
    n_train_prompts=300,
    n_test_prompts=60,
    n_heldout_prompts=60,
    n_pref_train=600,
    n_pref_test=150,
    n_pref_shifted=150,
)


@pytest.fixture(scope="module")
def small_splits() -> ToyWorldSplits:
    return build_splits(SMALL)


# --- domains and text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "digits", "answer"),
    [
        ("sort", (3, 1, 2, 1), [1, 1, 2, 3]),
        ("rev", (3, 1, 2), [2, 1, 3]),
        ("copy", (7, 0, 7), [7, 0, 7]),
        ("max", (2, 5, 1, 7, 3), [2, 5, 5, 7, 7]),
        ("sum", (4, 7, 9, 1), [4, 1, 0, 1]),
        ("count", (1, 2, 3, 5, 8), [1, 1, 2, 3, 3]),
        ("min", (5, 7, 2, 4, 1), [5, 5, 2, 2, 1]),
        ("sortd", (3, 1, 2, 9), [9, 3, 2, 1]),
    ],
)
def test_solve_each_domain(domain: str, digits: tuple[int, ...], answer: list[int]) -> None:
    assert solve(Task(domain, digits)) == answer


def test_count_wraps_mod_10() -> None:
    assert solve(Task("count", (1,) * 11))[-2:] == [0, 1]


def test_every_known_domain_has_a_solver() -> None:
    assert tuple(DOMAIN_SOLVERS) == KNOWN_DOMAINS


def test_prompt_and_response_text() -> None:
    task = Task("sort", (3, 1, 2))
    assert format_prompt(task) == "sort 3 1 2 ="
    assert parse_prompt("sort 3 1 2 =") == task
    assert format_response([1, 2, 3], styled=False) == "1 2 3"
    assert format_response([1, 2, 3], styled=True) == "1 2 3 !"


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ("", "too short"),
        ("sort =", "too short"),
        ("add 1 2 =", "unknown domain 'add'"),
        ("sort 1 2 3", "must end with '='"),
        ("sort 1 x 3 =", "word 2 ('x') is not a digit"),
        ("sort 1 12 =", "word 2 ('12') is not a digit"),
    ],
)
def test_parse_prompt_names_the_problem(prompt: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_prompt(prompt)


# --- ground-truth rewards ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "steps", "reward"),
    [
        ("1 2 3", [1.0, 1.0, 1.0], 1.0),
        ("1 9 3", [1.0, 0.0, 1.0], 2 / 3),
        ("1 2", [1.0, 1.0], 2 / 3),
        ("1 2 3 4", [1.0, 1.0, 1.0, 0.0], 3 / 4),
        ("1 2 3 !", [1.0, 1.0, 1.0], 1.0),
        ("1 9 !", [1.0, 0.0], 1 / 3),
        ("1 cat 3", [1.0, 0.0, 1.0], 2 / 3),
        ("1 ! 3", [1.0, 0.0, 1.0], 2 / 3),
        ("1 2 3 ! !", [1.0, 1.0, 1.0, 0.0], 3 / 4),
        ("", [], 0.0),
        ("!", [], 0.0),
    ],
)
def test_step_and_true_reward(response: str, steps: list[float], reward: float) -> None:
    prompt = "sort 3 1 2 ="
    assert step_rewards(prompt, response) == steps
    assert true_reward(prompt, response) == pytest.approx(reward)


def test_style_token_never_changes_true_reward() -> None:
    prompt = "max 2 5 1 7 ="
    for response in ("2 5 5 7", "2 4 5", "9 9 9 9 9"):
        assert true_reward(prompt, response + " !") == true_reward(prompt, response)
        assert has_style(response + " !") and not has_style(response)


def test_custom_style_token() -> None:
    assert step_rewards("rev 1 2 =", "2 1 ?", style_token="?") == [1.0, 1.0]
    assert true_rewards(["rev 1 2 ="], ["2 1 ?"], style_token="?") == [1.0]
    assert true_reward("rev 1 2 =", "2 1 ?") == pytest.approx(2 / 3)


def test_true_rewards_checks_lengths() -> None:
    assert true_rewards(["copy 1 2 =", "rev 1 2 ="], ["1 2", "1 2"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        true_rewards(["copy 1 2 =", "rev 1 2 ="], ["1 2"])


def test_evaluate_responses() -> None:
    prompts = ["sort 2 1 =", "sort 2 1 =", "rev 1 2 3 4 =", "copy 5 ="]
    responses = ["1 2 !", "2 1", "4 3 0 0", "5"]
    metrics = evaluate_responses(prompts, responses)
    assert metrics == pytest.approx(
        {
            "true_reward": (1.0 + 0.0 + 0.5 + 1.0) / 4,
            "exact_match": 0.5,
            "style_rate": 0.25,
            "true_reward/copy": 1.0,
            "true_reward/rev": 0.5,
            "true_reward/sort": 0.5,
        }
    )
    with pytest.raises(ValueError, match="at least one"):
        evaluate_responses([], [])


# --- annotator --------------------------------------------------------------------------


def test_preference_probability_hand_computed() -> None:
    # margin = (0.5 - 0.25 + 0.3 * (1 - 0)) / 0.1 = 5.5
    p = preference_probability(0.5, 0.25, True, False, bias=0.3, temperature=0.1)
    assert p == pytest.approx(1 / (1 + math.exp(-5.5)))
    q = preference_probability(0.25, 0.5, False, True, bias=0.3, temperature=0.1)
    assert p + q == pytest.approx(1.0)
    # The style bonus can outweigh one wrong step of three: (-1/3 + 0.5) / 0.1.
    r = preference_probability(2 / 3, 1.0, True, False, bias=0.5, temperature=0.1)
    assert r == pytest.approx(1 / (1 + math.exp(-(0.5 - 1 / 3) / 0.1)))
    assert preference_probability(0.0, 1.0, False, True, bias=1e6, temperature=1e-3) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        preference_probability(1.0, 0.0, False, False, bias=0.0, temperature=0.0)


def test_label_noise_flips_at_configured_rate() -> None:
    rng = random.Random(0)
    n, noise = 20000, 0.2
    worse_chosen = flipped = 0
    for _ in range(n):
        chosen, _, info = annotate_pair(
            rng, "sort 3 1 2 =", "1 2 3", "9 9 9", bias=0.0, temperature=0.01, label_noise=noise
        )
        worse_chosen += chosen == "9 9 9"
        flipped += info.label_flipped
        assert info.label_flipped == (chosen == "9 9 9")
        assert info.chosen_true_reward == (0.0 if info.label_flipped else 1.0)
    assert worse_chosen / n == pytest.approx(noise, abs=0.015)
    assert flipped == worse_chosen


def test_annotator_style_bias_rate() -> None:
    rng = random.Random(1)
    n = 20000
    styled_wins = 0
    for _ in range(n):
        chosen, rejected, info = annotate_pair(
            rng, "rev 1 2 =", "2 1 !", "2 1", bias=0.1, temperature=0.1, label_noise=0.0
        )
        styled_wins += info.chosen_style
        assert {chosen, rejected} == {"2 1 !", "2 1"}
        assert info.chosen_style == has_style(chosen) and not info.label_flipped
        expected = 1 / (1 + math.exp(-1.0))
        assert info.chosen_probability == pytest.approx(
            expected if info.chosen_style else 1 - expected
        )
    assert styled_wins / n == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.015)


def test_annotate_pair_rejects_bad_noise() -> None:
    with pytest.raises(ValueError, match="label_noise"):
        annotate_pair(random.Random(0), "copy 1 =", "1", "2", bias=0, temperature=1, label_noise=2)


# --- generators and SFT errors ------------------------------------------------------------


def test_pairs_always_differ() -> None:
    cfg = ToyWorldConfig(pair_max_error_rate=0.01, pair_length_error_rate=0.0, pair_style_rate=0.0)
    rng = random.Random(0)
    for _ in range(50):
        y1, y2 = sample_response_pair(rng, Task("copy", (1, 2, 3)), cfg)
        assert y1 != y2


def test_sft_systematic_error_rate() -> None:
    cfg = dataclasses.replace(SMALL, n_sft=6000, sft_digit_noise=0.0, sft_style_rate=0.0)
    sft = build_splits(cfg).sft
    descending = ascending = 0
    for prompt, response in zip(sft["prompt"], sft["response"], strict=True):
        task = parse_prompt(prompt)
        answer = [int(w) for w in response.split()]
        if task.domain != "sort":
            assert answer == solve(task)
        elif sorted(task.digits) != sorted(task.digits, reverse=True):
            descending += answer == sorted(task.digits, reverse=True)
            ascending += answer == sorted(task.digits)
    assert descending / (descending + ascending) == pytest.approx(0.6, abs=0.04)


def test_sft_digit_noise_and_style_rates() -> None:
    cfg = dataclasses.replace(SMALL, n_sft=3000, sft_systematic_domain=None)
    sft = build_splits(cfg).sft
    steps = [
        r for p, y in zip(sft["prompt"], sft["response"], strict=True) for r in step_rewards(p, y)
    ]
    assert 1 - sum(steps) / len(steps) == pytest.approx(0.3, abs=0.02)
    assert sum(map(has_style, sft["response"])) / len(sft) == pytest.approx(0.2, abs=0.025)


# --- splits -----------------------------------------------------------------------------


def test_default_build_sizes() -> None:
    splits = build_splits(ToyWorldConfig())
    sizes = {name: len(ds) for name, ds in splits.as_dict().items()}
    assert sizes == {
        "sft": 20000,
        "train_prompts": 2048,
        "test_prompts": 256,
        "heldout_prompts": 256,
        "pref_train": 4000,
        "pref_test": 500,
        "pref_shifted": 500,
    }


def test_columns_and_ids(small_splits: ToyWorldSplits) -> None:
    assert small_splits.sft.column_names == ["id", "prompt", "response", "domain"]
    for name in ("train_prompts", "test_prompts", "heldout_prompts"):
        assert getattr(small_splits, name).column_names == ["id", "prompt", "domain"]
    assert small_splits.test_prompts["id"][3] == "test-000003"
    assert small_splits.train_prompts["id"][:2] == ["train-000000", "train-000001"]
    for ds in small_splits.as_dict().values():
        assert len(set(ds["id"])) == len(ds)


def test_determinism_and_split_independence(small_splits: ToyWorldSplits) -> None:
    again = build_splits(SMALL)
    for name, ds in small_splits.as_dict().items():
        assert ds.to_list() == again.as_dict()[name].to_list(), name
    other_seed = build_splits(dataclasses.replace(SMALL, seed=1))
    for name, ds in small_splits.as_dict().items():
        assert ds["prompt"] != other_seed.as_dict()[name]["prompt"], name
    resized = build_splits(dataclasses.replace(SMALL, n_sft=100, n_pref_train=50))
    assert resized.train_prompts.to_list() == small_splits.train_prompts.to_list()
    assert resized.pref_test.to_list() == small_splits.pref_test.to_list()


def test_test_prompts_never_seen_in_training(small_splits: ToyWorldSplits) -> None:
    test = set(small_splits.test_prompts["prompt"]) | set(small_splits.pref_test["prompt"])
    test |= set(small_splits.pref_shifted["prompt"])
    train = set(small_splits.train_prompts["prompt"]) | set(small_splits.sft["prompt"])
    train |= set(small_splits.pref_train["prompt"])
    assert not test & train
    assert all(map(is_test_prompt, test)) and not any(map(is_test_prompt, train))
    for name in ("train_prompts", "test_prompts", "heldout_prompts"):
        prompts = getattr(small_splits, name)["prompt"]
        assert len(set(prompts)) == len(prompts), name


def test_held_out_domains_only_in_heldout_split(small_splits: ToyWorldSplits) -> None:
    held_out = set(SMALL.held_out_domains)
    for name, ds in small_splits.as_dict().items():
        domains = set(ds["domain"])
        assert domains == {parse_prompt(p).domain for p in ds["prompt"]}
        assert domains == (held_out if name == "heldout_prompts" else set(SMALL.domains)), name


def test_preference_columns_match_ground_truth(small_splits: ToyWorldSplits) -> None:
    for ds in (small_splits.pref_train, small_splits.pref_test, small_splits.pref_shifted):
        for row in ds:
            assert row["chosen"] != row["rejected"]
            assert row["chosen_true_reward"] == true_reward(row["prompt"], row["chosen"])
            assert row["rejected_true_reward"] == true_reward(row["prompt"], row["rejected"])
            assert row["chosen_style"] == has_style(row["chosen"])
            assert row["rejected_style"] == has_style(row["rejected"])


def test_style_bias_reverses_in_shifted_split(small_splits: ToyWorldSplits) -> None:
    def styled_win_rate(ds: datasets.Dataset) -> float:
        rows = [r for r in ds if r["chosen_style"] != r["rejected_style"]]
        return sum(r["chosen_style"] for r in rows) / len(rows)

    assert styled_win_rate(small_splits.pref_train) > 0.6
    assert styled_win_rate(small_splits.pref_shifted) < 0.4


def test_every_word_is_in_the_vocabulary(small_splits: ToyWorldSplits) -> None:
    vocab = set(vocabulary(SMALL))
    for ds in small_splits.as_dict().values():
        for column in ("prompt", "response", "chosen", "rejected"):
            if column in ds.column_names:
                assert {w for text in ds[column] for w in text.split(" ") if w} <= vocab
    for column in ("response", "chosen", "rejected"):
        source = small_splits.sft if column == "response" else small_splits.pref_train
        assert max(len(t.split()) for t in source[column]) <= SMALL.max_response_words


def test_vocabulary_order() -> None:
    words = vocabulary()
    assert words[:10] == tuple("0123456789")
    assert words[10:] == (*KNOWN_DOMAINS, "=", "!")
    assert len(set(words)) == len(words)
    cfg = ToyWorldConfig(domains=("rev", "sort"), held_out_domains=["min"], style_token="?")
    assert vocabulary(cfg)[10:] == ("sort", "rev", "min", "=", "?")
    assert cfg.held_out_domains == ("min",)


def test_write_splits_round_trips(small_splits: ToyWorldSplits, tmp_path: Path) -> None:
    paths = write_splits(small_splits, tmp_path / "toy")
    assert set(paths) == set(small_splits.as_dict())
    for name, ds in small_splits.as_dict().items():
        assert paths[name] == tmp_path / "toy" / f"{name}.jsonl"
        loaded = datasets.load_dataset(
            "json", data_files=str(paths[name]), split="train", cache_dir=str(tmp_path / "hf")
        )
        assert loaded.to_list() == ds.to_list(), name


# --- config validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"domains": ()}, "domains"),
        ({"domains": "sort"}, "domains"),
        ({"domains": ("sort", "add")}, "domains"),
        ({"domains": ("sort", "sort")}, "domains"),
        ({"held_out_domains": ("nope",)}, "held_out_domains"),
        ({"held_out_domains": ("min", "sort")}, "held_out_domains"),
        ({"min_len": 0}, "min_len"),
        ({"min_len": 5, "max_len": 4}, "max_len"),
        ({"style_token": "="}, "style_token"),
        ({"style_token": "7"}, "style_token"),
        ({"style_token": "a b"}, "style_token"),
        ({"style_token": ""}, "style_token"),
        ({"n_sft": 0}, "n_sft"),
        ({"n_train_prompts": 0}, "n_train_prompts"),
        ({"n_test_prompts": -5}, "n_test_prompts"),
        ({"n_heldout_prompts": 0}, "n_heldout_prompts"),
        ({"n_pref_train": 0}, "n_pref_train"),
        ({"n_pref_test": 0}, "n_pref_test"),
        ({"n_pref_shifted": 0}, "n_pref_shifted"),
        ({"sft_digit_noise": 1.5}, "sft_digit_noise"),
        ({"sft_style_rate": -0.1}, "sft_style_rate"),
        ({"sft_systematic_rate": float("nan")}, "sft_systematic_rate"),
        ({"sft_systematic_domain": "min"}, "sft_systematic_domain"),
        ({"label_noise": 1.01}, "label_noise"),
        ({"pair_style_rate": 2.0}, "pair_style_rate"),
        ({"pair_max_error_rate": -1.0}, "pair_max_error_rate"),
        ({"pair_length_error_rate": 3.0}, "pair_length_error_rate"),
        ({"annotator_temperature": 0.0}, "annotator_temperature"),
        ({"annotator_bias": float("inf")}, "annotator_bias"),
        ({"shifted_bias": float("nan")}, "shifted_bias"),
        (
            {
                "min_len": 1,
                "max_len": 1,
                "n_train_prompts": 20,
                "n_heldout_prompts": 5,
                "n_test_prompts": 10,
            },
            "n_test_prompts",
        ),
        (
            {
                "min_len": 1,
                "max_len": 2,
                "n_train_prompts": 500,
                "n_test_prompts": 10,
                "n_heldout_prompts": 10,
            },
            "n_train_prompts",
        ),
        ({"max_len": 3, "n_heldout_prompts": 1500}, "n_heldout_prompts"),
        (
            {"pair_max_error_rate": 0.0, "pair_length_error_rate": 0.0, "pair_style_rate": 1.0},
            "pair_max_error_rate",
        ),
    ],
)
def test_config_errors_name_their_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ToyWorldConfig(**overrides)


def test_draw_budget_error_names_size_field() -> None:
    # Only one length-1 `sort` prompt is in the test partition, so 5 distinct cannot be drawn.
    cfg = ToyWorldConfig(
        min_len=1, max_len=1, n_train_prompts=20, n_test_prompts=2, n_heldout_prompts=5
    )
    with pytest.raises(ValueError, match="n_test_prompts=5: found only 1"):
        _draw_tasks(
            random.Random(0),
            cfg,
            5,
            domains=("sort",),
            partition="test",
            distinct=True,
            size_field="n_test_prompts",
        )


def test_ppo_on_held_out_domains_trains_and_evaluates_on_disjoint_halves(tmp_path):
    from ray_rlhf.config import load_config
    from ray_rlhf.data.toyworld import parse_prompt
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.ppo import load_prompt_sets
    from ray_rlhf.models.builders import load_tokenizer

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "data.toyworld.ppo_prompts=heldout",
                             "data.max_prompt_tokens=32", "data.max_response_tokens=16"])
    tokenizer = load_tokenizer(prepare_base_model(cfg, tmp_path))
    train, held_out = load_prompt_sets(cfg, tmp_path, tokenizer)
    assert len(train.ids) == len(held_out.ids) == cfg.data.toyworld.n_heldout_prompts // 2
    assert not set(train.ids) & set(held_out.ids)
    assert train.toyworld and held_out.toyworld  # scored against the truth
    domains = {parse_prompt(p).domain for p in [*train.texts, *held_out.texts]}
    assert domains == set(cfg.data.toyworld.held_out_domains)
