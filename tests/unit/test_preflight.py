"""Token limits (`ray_rlhf.data.limits`) and the checks a run makes before Ray starts
(`ray_rlhf.loops.preflight`), on a tiny model with a chat template and chat prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ray_rlhf.config import ConfigError, DataConfig, load_config
from ray_rlhf.data import DataValidationError
from ray_rlhf.data.limits import (
    DEFAULT_RESPONSE_TOKENS,
    TOY_PROMPT_TOKENS,
    TOY_RESPONSE_TOKENS,
    max_sequence_tokens,
    resolve_token_limits,
)
from ray_rlhf.loops.common import prepare_run_dir
from ray_rlhf.loops.preflight import preflight
from ray_rlhf.models import TinyModelSpec, build_word_tokenizer, write_tiny_model
from ray_rlhf.models.checkpoint import max_positions

# A chat template with a system turn, like a real chat model's: the template alone costs tokens.
CHAT_TEMPLATE = (
    "{%- for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif -%}"
)
WORDS = ["<|system|>", "<|user|>", "<|assistant|>", "you", "are", "a", "helpful", "bot"]
WORDS += ["sort", "the", "list", "please", "1", "2", "3", "=", "ok"]
SYSTEM = " ".join(["you are a helpful bot"] * 6)  # 30 tokens


def resolve(prompt=None, response=None, *, longest=(10, 0), positions=128, toy=False):
    return resolve_token_limits(
        prompt,
        response,
        longest_prompt=longest[0],
        longest_response=longest[1],
        max_positions=positions,
        toy=toy,
    )


def test_derived_limits_fit_the_data_and_the_model():
    limits = resolve(longest=(40, 0), positions=8192)
    assert (limits.prompt, limits.response) == (40, DEFAULT_RESPONSE_TOKENS)
    assert "longest prompt" in limits.describe()
    # The response limit shrinks to what the model holds after the longest prompt.
    limits = resolve(longest=(70, 0), positions=128)
    assert (limits.prompt, limits.response) == (70, 128 - 2 - 70)
    assert "capped" in limits.response_reason
    # Longer SFT / preference responses raise the derived response limit.
    assert resolve(longest=(10, 300), positions=None).response == 300


def test_toy_world_keeps_its_sizes_and_set_values_are_kept():
    limits = resolve(longest=(12, 9), toy=True)
    assert (limits.prompt, limits.response) == (TOY_PROMPT_TOKENS, TOY_RESPONSE_TOKENS)
    assert (resolve(64, 8, longest=(3, 3)).prompt, resolve(64, 8).response) == (64, 8)


def test_a_derived_prompt_limit_is_capped_below_the_window():
    limits = resolve(longest=(500, 0), positions=128)
    assert (limits.prompt, limits.response) == (125, 1)
    assert resolve(None, 100, longest=(500, 0), positions=128).prompt == 26


@pytest.mark.parametrize(
    ("prompt", "response", "pattern"),
    [
        (100, 100, r"data\.max_prompt_tokens \+ data\.max_response_tokens: 100 \+ 100"),
        (126, None, r"data\.max_prompt_tokens: 126 leaves no room"),
        (None, 126, r"data\.max_response_tokens: 126 leaves no room"),
    ],
)
def test_set_limits_the_model_cannot_hold_name_the_keys(prompt, response, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve(prompt, response, positions=128)


def test_unresolved_limits_are_refused_where_they_are_read():
    assert max_sequence_tokens(DataConfig(max_prompt_tokens=5, max_response_tokens=6)) == 13
    with pytest.raises(ValueError, match="unresolved"):
        max_sequence_tokens(DataConfig())


def test_max_positions_reads_config_json(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"n_positions": 1024}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # headers are read
    assert max_positions(tmp_path) == 1024
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert max_positions(tmp_path) is None


# --------------------------------------------------------------------- preflight


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """Tiny Llama (128 positions) whose tokenizer has a system-turn chat template."""
    tokenizer = build_word_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    out = tmp_path_factory.mktemp("chat") / "model"
    return write_tiny_model(out, tokenizer, TinyModelSpec())


def chat_prompts(path: Path, n: int, *, words: int = 30) -> Path:
    """`n` chat prompts of 30 (system) + `words` + 3 (role markers) tokens."""
    rows = []
    for i in range(n):
        user = " ".join(["sort the list please", "1 2 3 ="][i % 2] for _ in range(words // 4))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        rows.append({"id": f"p{i}", "messages": messages})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ppo_config(tmp_path: Path, model: Path, prompts: Path, *extra: str):
    overrides = [
        f"run.output_dir={tmp_path / 'runs'}",
        f"model.path={model}",
        f"data.prompts_path={prompts}",
        *extra,
    ]
    return load_config(None, overrides)


def test_preflight_resolves_limits_from_chat_prompts(tmp_path: Path, chat_model: Path):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 20, words=32)
    cfg = ppo_config(tmp_path, chat_model, prompts, f"data.eval_prompts_path={prompts}")
    run_dir = prepare_run_dir(cfg)
    resolved = preflight(cfg, run_dir, ("ppo",))
    # 3 role markers + 30 system words + the user's words
    assert resolved.data.max_prompt_tokens >= 60
    assert resolved.data.max_response_tokens == 128 - 2 - resolved.data.max_prompt_tokens
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert saved["max_prompt_tokens"] == resolved.data.max_prompt_tokens


def test_preflight_names_rows_over_a_set_limit(tmp_path: Path, chat_model: Path):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 4)
    cfg = ppo_config(
        tmp_path,
        chat_model,
        prompts,
        f"data.eval_prompts_path={prompts}",
        "data.max_prompt_tokens=32",
    )
    with pytest.raises(DataValidationError, match=r"more than max_prompt_tokens=32") as caught:
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))
    assert (caught.value.source, caught.value.row, caught.value.field) == (
        str(prompts),
        0,
        "messages",
    )


def test_preflight_names_rows_the_model_cannot_hold(tmp_path: Path, chat_model: Path):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 3, words=120)
    cfg = ppo_config(tmp_path, chat_model, prompts, f"data.eval_prompts_path={prompts}")
    with pytest.raises(DataValidationError, match=r"more than max_prompt_tokens=125"):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_preflight_on_the_toy_world_keeps_toy_sizes(tmp_path: Path):
    cfg = load_config(
        None, [f"run.output_dir={tmp_path}", "data.toyworld.n_sft=50", "sft.batch_size=2"]
    )
    resolved = preflight(cfg, prepare_run_dir(cfg), ("sft",))
    data = resolved.data
    assert (data.max_prompt_tokens, data.max_response_tokens) == (
        TOY_PROMPT_TOKENS,
        TOY_RESPONSE_TOKENS,
    )


# --------------------------------------------------------------------- held-out eval prompts


@pytest.mark.parametrize(("rows", "held"), [(2, 1), (10, 1), (200, 10), (20000, 256)])
def test_held_out_split_sizes(rows: int, held: int):
    import datasets

    from ray_rlhf.data.sampler import held_out_split

    dataset = datasets.Dataset.from_dict({"id": [str(i) for i in range(rows)]})
    train, held_out = held_out_split(dataset, 0.05, seed=3, max_rows=256)
    assert held_out.num_rows == held
    assert sorted([*train["id"], *held_out["id"]]) == sorted(dataset["id"])
    again = held_out_split(dataset, 0.05, seed=3, max_rows=256)[1]
    assert list(again["id"]) == list(held_out["id"])  # seeded: the same slice every time


def test_eval_prompts_are_held_out_of_the_train_prompts(tmp_path, chat_model, caplog):
    from ray_rlhf.loops.ppo import load_prompt_sets
    from ray_rlhf.models import load_tokenizer

    prompts = chat_prompts(tmp_path / "prompts.jsonl", 40)
    cfg = ppo_config(tmp_path, chat_model, prompts, "data.eval_fraction=0.1")
    run_dir = prepare_run_dir(cfg)
    with caplog.at_level("INFO", logger="ray_rlhf"):
        resolved = preflight(cfg, run_dir, ("ppo",))
    assert "holding out 4 of the 40 prompts" in caplog.text
    train, held_out = load_prompt_sets(resolved, run_dir, load_tokenizer(chat_model))
    assert len(held_out.ids) == 4 and len(train.ids) == 36
    assert not set(train.ids) & set(held_out.ids)
    assert not held_out.toyworld


def test_a_single_prompt_cannot_be_split(tmp_path, chat_model):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 1)
    cfg = ppo_config(tmp_path, chat_model, prompts)
    with pytest.raises(DataValidationError, match="single prompt is too few"):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))


# --------------------------------------------------------------------- checks before Ray


def test_a_reward_rule_that_cannot_be_called_stops_preflight(tmp_path, chat_model):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 10)
    rule = tmp_path / "rule.py"
    rule.write_text("def one_arg(response):\n    return 1.0\n\nNOT_A_FUNCTION = 3\n")
    for spec, pattern in [
        (f"{rule}:one_arg", r"cannot be called as one_arg\(prompt, response\)"),
        (f"{rule}:NOT_A_FUNCTION", "not callable"),
        ("no_such_module_xyz:f", "not found"),
    ]:
        cfg = ppo_config(tmp_path, chat_model, prompts, f"reward.rule={spec}")
        with pytest.raises(ValueError, match=pattern):
            preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_a_bad_model_dir_stops_preflight(tmp_path):
    from ray_rlhf.models import ModelDirError

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (pickled / "pytorch_model.bin").write_bytes(b"")
    for path, pattern in [(tmp_path / "missing", "does not exist"), (pickled, "pickle")]:
        cfg = load_config(None, [f"run.output_dir={tmp_path / 'runs'}", f"model.path={path}"])
        with pytest.raises(ModelDirError, match=pattern):
            preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_preference_checks_run_before_training(tmp_path, chat_model):
    pairs = tmp_path / "pairs.jsonl"
    row = {"prompt": "sort the list", "chosen": "1 2 3", "rejected": "3 2 1"}
    pairs.write_text(json.dumps(row) + "\n")
    base = [f"run.output_dir={tmp_path / 'runs'}", f"model.path={chat_model}"]
    cfg = load_config(None, [*base, f"data.preferences_path={pairs}"])
    with pytest.raises(DataValidationError, match="0 held-out preference pair"):
        preflight(cfg, prepare_run_dir(cfg), ("rm",))
    cfg = load_config(None, [*base, f"data.preferences_path={pairs}", "rm.loss=flip"])
    with pytest.raises(DataValidationError, match="needs a 'strength' column"):
        preflight(cfg, prepare_run_dir(cfg), ("rm",))


def test_eval_preferences_path_is_the_held_out_set(tmp_path, chat_model):
    from ray_rlhf.loops.rm import load_pair_splits
    from ray_rlhf.models.builders import load_tokenizer

    def write(name: str, rejected: list[str]) -> Path:
        path = tmp_path / name
        rows = [{"prompt": "sort the list", "chosen": "1 2 3", "rejected": r} for r in rejected]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    train = write("train.jsonl", ["3 2 1"])  # one pair: too few to hold any out of it
    held = write("held.jsonl", ["2 1 3", "3 1 2"])
    base = [f"run.output_dir={tmp_path / 'runs'}", f"model.path={chat_model}",
            f"data.preferences_path={train}", "learner.num_workers=1"]
    cfg = load_config(None, [*base, f"data.eval_preferences_path={held}"])
    run_dir = prepare_run_dir(cfg)
    preflight(cfg, run_dir, ("rm",))
    got_train, got_held, source = load_pair_splits(cfg, run_dir, load_tokenizer(chat_model))
    assert (got_train.num_rows, got_held.num_rows, source) == (1, 2, str(train))
    assert list(got_held["rejected"]) == ["2 1 3", "3 1 2"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "sort the list", "chosen": "1 2 3"}) + "\n")
    cfg = load_config(None, [*base, f"data.eval_preferences_path={bad}", "run.name=bad"])
    with pytest.raises(DataValidationError, match=r"bad\.jsonl.*rejected"):
        preflight(cfg, prepare_run_dir(cfg), ("rm",))


def test_rm_init_path_must_be_a_reward_model_of_the_policy_vocabulary(tmp_path, chat_model):
    from ray_rlhf.models import ModelDirError
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    def reward_model(policy: Path, name: str, head: str = "scalar") -> Path:
        out = tmp_path / name
        save_hf_model(load_reward_model(policy, head=head), load_tokenizer(policy), out)
        return out

    other_words = write_tiny_model(
        tmp_path / "other", build_word_tokenizer([*WORDS, "extra"]), TinyModelSpec()
    )
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "sort the list", "chosen": "1 2 3", "rejected": f"3 2 {i}"} for i in (1, 2)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = [
        f"run.output_dir={tmp_path / 'runs'}",
        f"model.path={chat_model}",
        f"data.preferences_path={pairs}",
        "learner.num_workers=1",
    ]

    def check(init: Path) -> None:
        cfg = load_config(None, [*base, f"rm.init_path={init}", f"run.name={init.name}"])
        preflight(cfg, prepare_run_dir(cfg), ("rm",))

    check(reward_model(chat_model, "rm"))  # a scalar RM of the policy's vocabulary
    with pytest.raises(ModelDirError, match="holds a causal LM, not a reward model"):
        check(chat_model)
    with pytest.raises(ModelDirError, match="'per_position' reward model, not 'scalar'"):
        check(reward_model(chat_model, "segment_rm", head="per_position"))
    with pytest.raises(ConfigError, match=r"rm\.init_path: .* another vocabulary"):
        check(reward_model(other_words, "other_rm"))


@pytest.fixture(scope="module")
def reward_models(chat_model, tmp_path_factory) -> dict[str, Path]:
    """A scalar and a per-position reward model of the chat model (no segment normalizer)."""
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    root = tmp_path_factory.mktemp("reward_models")
    tokenizer = load_tokenizer(chat_model)

    def save(head: str) -> Path:
        rm = load_reward_model(chat_model, head=head)
        return save_hf_model(rm, tokenizer, root / head, metadata={"head": head})

    return {head: save(head) for head in ("scalar", "per_position")}


@pytest.mark.parametrize(
    ("reward", "overrides", "pattern"),
    [
        (
            None,
            ["segment.reward_granularity=segment", "ppo.advantage=gae"],
            r"^segment\.reward_granularity: 'segment' rewards are a per-position reward model's "
            r"values, but reward\.kind='rule' \(a rule\) gives one score per response; set",
        ),
        (
            "per_position",
            ["segment.reward_granularity=token", "ppo.advantage=rloo"],
            r"^segment\.reward_granularity: 'token' gives per-token rewards, but "
            r"ppo\.advantage='rloo'",
        ),
        (
            "scalar",
            ["segment.reward_granularity=token", "ppo.advantage=gae"],
            r"^segment\.reward_granularity: 'token' needs a reward model with a value at every "
            r"position, but reward\.model_path .*/scalar is a scalar reward model",
        ),
        (
            "per_position",
            ["segment.reward_granularity=bandit"],
            r"^segment\.reward_granularity: 'bandit' .*/per_position is a per_position reward",
        ),
        (
            "per_position",
            ["segment.reward_granularity=segment", "ppo.advantage=gae"],
            r"^reward\.model_path: reward model .*/per_position has no fitted segment normalizer",
        ),
    ],
    ids=["rule", "rloo", "scalar RM", "bandit with a per_position RM", "no normalizer"],
)
def test_segment_rewards_that_cannot_work_stop_preflight(
    tmp_path, chat_model, reward_models, reward, overrides, pattern
):
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 10)
    model = ["reward.kind=model", f"reward.model_path={reward_models[reward]}"] if reward else []
    cfg = ppo_config(tmp_path, chat_model, prompts, *model, *overrides)
    with pytest.raises(ConfigError, match=pattern):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_a_per_position_rm_config_passes_the_rm_stage(tmp_path, chat_model):
    """RM training reads the segmentation but not `reward` / `ppo`, which stay at defaults."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "sort the list", "chosen": "1 2 3", "rejected": f"3 2 {i}"} for i in (1, 2)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path / 'runs'}",
            f"model.path={chat_model}",
            f"data.preferences_path={pairs}",
            "learner.num_workers=1",
            "rm.head=per_position",
            "segment.reward_granularity=segment",
        ],
    )
    assert (cfg.reward.kind, cfg.ppo.advantage) == ("rule", "rloo")
    preflight(cfg, prepare_run_dir(cfg), ("rm",))


def test_a_truncated_weight_file_stops_preflight(tmp_path, chat_model):
    import shutil

    from ray_rlhf.models import ModelDirError

    model = tmp_path / "model"
    shutil.copytree(chat_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    prompts = chat_prompts(tmp_path / "prompts.jsonl", 10)
    cfg = ppo_config(tmp_path, model, prompts)
    with pytest.raises(ModelDirError, match=r"model\.safetensors is truncated or corrupt"):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_ppo_job_with_bad_prompts_fails_before_ray_and_before_sft(tmp_path):
    import ray

    from ray_rlhf.loops import ppo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "sort 1 2 ="}\n{"prompt": ""}\n')
    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"data.prompts_path={prompts}"])
    with pytest.raises(DataValidationError, match="row 1, field 'prompt': empty text"):
        ppo.run_job(cfg)
    assert not ray.is_initialized()
    assert not (cfg.run.run_dir / "policy").exists()  # the SFT stage never started


# --------------------------------------------------------------------- chat templates


def plain_prompts(path: Path, n: int) -> Path:
    rows = [{"id": f"p{i}", "prompt": "sort the list please 1 2 3 ="} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("mode", "rendered", "logged"),
    [
        ("auto", True, "(as one user message) and chat rows (message lists) are rendered"),
        ("never", False, "are used as written (data.chat_template=never); chat rows"),
    ],
)
def test_plain_prompts_get_the_chat_template_of_the_model(
    tmp_path, chat_model, caplog, mode, rendered, logged
):
    from ray_rlhf.loops.ppo import load_prompt_sets
    from ray_rlhf.models import load_tokenizer

    prompts = plain_prompts(tmp_path / "prompts.jsonl", 10)
    cfg = ppo_config(tmp_path, chat_model, prompts, f"data.chat_template={mode}")
    run_dir = prepare_run_dir(cfg)
    with caplog.at_level("INFO", logger="ray_rlhf"):
        resolved = preflight(cfg, run_dir, ("ppo",))
    assert f"chat template: plain-text prompts {logged}" in caplog.text
    # 8 words, plus <|user|> and <|assistant|> when rendered
    assert resolved.data.max_prompt_tokens == (10 if rendered else 8)
    train, _ = load_prompt_sets(resolved, run_dir, load_tokenizer(chat_model))
    assert train.user_texts[0] == "sort the list please 1 2 3 ="
    assert train.texts[0].startswith("<|user|>") == rendered


def test_always_without_a_template_is_a_config_error_naming_the_key(tmp_path):
    model = write_tiny_model(
        tmp_path / "plain", build_word_tokenizer(WORDS, chat_template=None), TinyModelSpec()
    )
    prompts = plain_prompts(tmp_path / "prompts.jsonl", 10)
    cfg = ppo_config(tmp_path, model, prompts, "data.chat_template=always")
    with pytest.raises(ConfigError, match=r"^data.chat_template: 'always', but the tokenizer"):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))


def test_a_resumed_run_compares_resolved_limits(tmp_path, chat_model):
    from ray_rlhf.loops.common import ConfigChangedError

    prompts = chat_prompts(tmp_path / "prompts.jsonl", 20, words=32)
    cfg = ppo_config(tmp_path, chat_model, prompts)
    preflight(cfg, prepare_run_dir(cfg), ("ppo",))  # stores the resolved limits
    preflight(cfg, prepare_run_dir(cfg), ("ppo",))  # same data: resumes
    chat_prompts(prompts, 20, words=40)  # the file now holds longer prompts
    with pytest.raises(ConfigChangedError, match=r"Changed: data.max_prompt_tokens: 6\d -> 7\d"):
        preflight(cfg, prepare_run_dir(cfg), ("ppo",))
