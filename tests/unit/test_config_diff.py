"""Resume safety: which config keys count as changing a run's result, and an unfinished run
dir refusing a rerun whose config differs in them (before Ray starts)."""

from __future__ import annotations

import logging

import pytest
import yaml

from ray_rlhf.config import RLHFConfig, dump_config, load_config, to_dict
from ray_rlhf.config_diff import (
    DERIVED_KEYS,
    NOT_RESULT_KEYS,
    ConfigChange,
    counts_for_result,
    flatten,
    result_changes,
)
from ray_rlhf.loops.common import ConfigChangedError, RunDirError, prepare_run_dir


def _tree(*overrides: str) -> dict:
    return to_dict(load_config(None, list(overrides)))


@pytest.mark.parametrize(
    "key",
    [
        "model.path",
        "model.tiny.hidden_size",
        "data.prompts_path",
        "data.chat_template",
        "data.toyworld.seed",
        "sft.steps",
        "sft.lr",
        "ppo.iterations",
        "ppo.advantage",
        "ppo.kl.coef",
        "rollout.n_samples",
        "reward.rule",
        "learner.num_workers",
        "learner.zero_stage",
        "rm.contrastive.kind",
        "run.seed",
    ],
)
def test_model_data_algorithm_sizes_and_seeds_count(key):
    assert counts_for_result(key)


@pytest.mark.parametrize(
    "key",
    [
        "run.overwrite",
        "run.allow_config_change",
        "run.name",
        "sft.log_every",
        "ppo.eval_every",
        "ppo.checkpoint_every",
        "rollout.num_actors",
        "reward.num_actors",
        "learner.max_failures",
        "resources.num_cpus",
        "resources.address",
    ],
)
def test_names_cadence_and_placement_do_not_count(key):
    assert not counts_for_result(key)


def test_every_listed_key_exists():
    keys = {key for key, _ in flatten(to_dict(RLHFConfig()))}
    assert NOT_RESULT_KEYS <= keys
    assert DERIVED_KEYS <= keys


def test_changes_name_the_dotted_keys_old_to_new_in_config_order():
    old = _tree("sft.steps=100", "sft.log_every=10", "rollout.num_actors=1")
    new = _tree(
        "model.path=/m", "sft.steps=200", "sft.log_every=20", "rollout.num_actors=2"
    )
    changes = result_changes(old, new)
    assert changes == [ConfigChange("model.path", None, "/m"), ConfigChange("sft.steps", 100, 200)]
    assert changes[0].describe() == 'model.path: null -> "/m"'
    assert changes[1].describe() == "sft.steps: 100 -> 200"


def test_yaml_round_trip_and_tuples_are_no_change(tmp_path):
    cfg = load_config(None, ["data.toyworld.domains=[sort, rev]", "ppo.lr=0.0001"])
    dump_config(cfg, tmp_path / "config.yaml")
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert result_changes(stored, to_dict(cfg)) == []


def test_derived_limits_compare_only_resolved_against_resolved():
    resolved = _tree("data.max_prompt_tokens=65", "data.max_response_tokens=61")
    derived = _tree()  # null: preflight derives them
    assert result_changes(resolved, derived) == []
    assert result_changes(derived, resolved) == []
    other = _tree("data.max_prompt_tokens=64", "data.max_response_tokens=61")
    assert result_changes(resolved, other, only=DERIVED_KEYS) == [
        ConfigChange("data.max_prompt_tokens", 65, 64)
    ]


def test_keys_added_since_the_stored_config_are_skipped():
    old = _tree("sft.steps=100")
    del old["data"]["eval_fraction"]
    assert result_changes(old, _tree("sft.steps=100", "data.eval_fraction=0.1")) == []


def _stored_run(tmp_path, *overrides: str):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", *overrides])
    run_dir = prepare_run_dir(cfg)
    dump_config(cfg, run_dir / "config.yaml")  # as preflight does once its checks pass
    return run_dir


def test_a_rerun_with_another_model_is_refused_naming_the_keys(tmp_path):
    run_dir = _stored_run(tmp_path, "sft.steps=100")
    new = load_config(
        None,
        [f"run.output_dir={tmp_path}", "run.name=r", "model.path=/other", "sft.steps=100"],
    )
    with pytest.raises(ConfigChangedError) as caught:
        prepare_run_dir(new)
    assert isinstance(caught.value, RunDirError)
    assert f"{run_dir} holds an unfinished run of another config" in str(caught.value)
    assert str(caught.value).endswith('Changed: model.path: null -> "/other"')
    assert "run.allow_config_change=true" in caught.value.hint


def test_same_result_keys_resume_and_allow_config_change_warns(tmp_path, caplog):
    _stored_run(tmp_path, "sft.steps=100")
    same = [f"run.output_dir={tmp_path}", "run.name=r", "sft.steps=100"]
    prepare_run_dir(load_config(None, [*same, "sft.log_every=5", "rollout.num_actors=3"]))
    allowed = load_config(None, [*same[:2], "sft.steps=300", "run.allow_config_change=true"])
    with caplog.at_level(logging.WARNING, logger="ray_rlhf"):
        prepare_run_dir(allowed)
    assert "sft.steps: 100 -> 300" in caplog.text


def test_a_run_dir_without_stored_config_starts_fresh(tmp_path):
    # e.g. the first attempt failed its checks: nothing ran under that config
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r"])
    run_dir = prepare_run_dir(cfg)
    assert not (run_dir / "config.yaml").exists()
    prepare_run_dir(load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "sft.steps=7"]))
