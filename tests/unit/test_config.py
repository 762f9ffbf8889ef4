"""Config: defaults, YAML + dotted overrides, round trip, and every error path."""

from __future__ import annotations

import dataclasses

import pytest

from ray_rlhf.config import (
    ConfigError,
    RLHFConfig,
    dump_config,
    load_config,
    parse_override,
    to_dict,
)


def test_defaults_are_valid_and_frozen():
    cfg = load_config()
    assert cfg == RLHFConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.lr = 1.0  # type: ignore[misc]


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  lr: 0.001\n  kl:\n    coef: 0.1\nsft:\n  steps: 10\n")
    cfg = load_config(path, ["ppo.kl.coef=0.05", "ppo.kl.estimator=k3", "sft.steps=20"])
    assert cfg.ppo.lr == 0.001
    assert cfg.ppo.kl.coef == 0.05
    assert cfg.ppo.kl.estimator == "k3"
    assert cfg.sft.steps == 20


def test_defaults_sit_under_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  name: from_file\n")
    cfg = load_config(path, [], defaults=["run.name=demo", "run.overwrite=true"])
    assert cfg.run.name == "from_file"
    assert cfg.run.overwrite is True
    assert load_config(None, ["run.name=x"], defaults=["run.name=demo"]).run.name == "x"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["ppo.advantage=gae", "data.toyworld.seed=7", "model.path=/m"])
    dump_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["ppo.lr=1"]).ppo.lr == 1.0
    # YAML 1.1 reads `1e-2` (no dot) as a string; it is still the number users mean.
    assert load_config(None, ["ppo.lr=1e-2"]).ppo.lr == 0.01
    assert load_config(None, ["ppo.critic_lr=+5E-4"]).ppo.critic_lr == 5e-4
    with pytest.raises(ConfigError, match=r"ppo\.lr: expected a number, got '1e'"):
        load_config(None, ["ppo.lr=1e"])
    with pytest.raises(ConfigError, match=r"sft\.steps: expected an integer"):
        load_config(None, ["sft.steps=1.5"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("ppo.kl.cof=0.1", r"ppo\.kl\.cof: unknown key \(did you mean 'coef'\?\)"),
        ("nosuch.x=1", r"nosuch: unknown key"),
        ("ppo.lr=fast", r"ppo\.lr: expected a number"),
        ("learner.bf16=3", r"learner\.bf16: expected bool"),
        ("ppo.kl.estimator=k4", r"ppo\.kl\.estimator: must be one of \['k1', 'k2', 'k3'\]"),
        ("ppo.kl.placement=loss", r"ppo\.kl\.estimator: k1 has zero expected gradient"),
        ("learner.zero_stage=5", r"learner\.zero_stage: must be one of \[0, 1, 2, 3\]"),
        ("ppo.kl=3", r"ppo\.kl: expected a mapping"),
        ("sft.steps=0", r"sft\.steps: must be > 0"),
        ("rollout.top_p=0", r"rollout\.top_p: must be in \(0, 1\]"),
        ("ppo.clip_eps=null", r"ppo\.clip_eps: expected a number, got None"),
        ("reward.kind=model", r"reward\.model_path: required when kind is 'model'"),
        ("reward.rule=nocolon", r"reward\.rule: must look like"),
        ("ppo.micro_batch_size=0", r"ppo\.micro_batch_size: must be > 0"),
        (
            "ppo.minibatch_size=50",
            r"ppo\.minibatch_size: 50 does not divide .* set ppo\.minibatch_size=32",
        ),
        ("ppo.lr=-0.0001", r"ppo\.lr: must be > 0"),
        ("ppo.critic_lr=0", r"ppo\.critic_lr: must be > 0"),
        ("ppo.is_cap=0.5", r"ppo\.is_cap: must be >= 1"),
        ("ppo.is_correction=full", r"ppo\.is_correction: must be one of \['truncated', 'none'\]"),
        ("sft.lr=0", r"sft\.lr: must be > 0"),
        ("rm.lr=-1", r"rm\.lr: must be > 0"),
        ("learner.max_failures=-2", r"learner\.max_failures: must be >= 0"),
        ("data.max_prompt_tokens=0", r"data\.max_prompt_tokens: must be > 0"),
        ("data.eval_fraction=1", r"data\.eval_fraction: must be in \(0, 1\)"),
    ],
)
def test_errors_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_async_rollouts_need_a_staleness_bound_of_at_least_one():
    with pytest.raises(ConfigError, match=r"ppo\.max_staleness: must be >= 1 with async"):
        load_config(None, ["ppo.async_rollouts=true", "ppo.max_staleness=0"])
    ppo = load_config(None, ["ppo.async_rollouts=true"]).ppo
    assert (ppo.max_staleness, ppo.is_correction, ppo.is_cap) == (1, "truncated", 2.0)
    assert not load_config(None).ppo.async_rollouts  # off by default


def test_cross_section_checks():
    with pytest.raises(ConfigError, match=r"sft\.batch_size: must be a positive multiple"):
        load_config(None, ["sft.batch_size=63", "learner.num_workers=2"])
    with pytest.raises(ConfigError, match=r"rollout\.n_samples: must be >= 2"):
        load_config(None, ["rollout.n_samples=1", "ppo.advantage=rloo"])
    assert load_config(None, ["rollout.n_samples=1", "ppo.advantage=gae"]).rollout.n_samples == 1


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (  # the first-contact finding: 8 x 4 = 32 samples, minibatch 64
            ["ppo.prompts_per_iteration=8"],
            r"ppo\.minibatch_size: 64 is more than the ppo\.prompts_per_iteration x "
            r"rollout\.n_samples = 8 x 4 = 32 samples of an iteration, so DeepSpeed would step "
            r"only once every 2 iterations; set ppo\.minibatch_size=32$",
        ),
        (
            ["ppo.prompts_per_iteration=24"],
            r"ppo\.minibatch_size: 64 does not divide .* = 96 samples .*; "
            r"set ppo\.minibatch_size=48",
        ),
        (
            ["ppo.prompts_per_iteration=6", "rollout.n_samples=3", "ppo.micro_batch_size=16"],
            r"ppo\.minibatch_size: .*; set ppo\.prompts_per_iteration=64 or lower",
        ),
        (
            ["ppo.prompts_per_iteration=5"],
            r"ppo\.prompts_per_iteration: must be a multiple of learner\.num_workers \(2\)",
        ),
        (
            ["ppo.minibatch_size=96", "ppo.prompts_per_iteration=48", "ppo.micro_batch_size=32"],
            r"ppo\.micro_batch_size: 32 must divide the per-learner minibatch .* = 48",
        ),
        (
            ["resources.num_cpus=3"],
            r"resources\.num_cpus: 3 is fewer than the 4 CPUs",
        ),
        (["ppo.kl.adaptive=true", "ppo.kl.coef=0"], r"ppo\.kl\.coef: must be > 0 with adaptive"),
    ],
)
def test_impossible_combinations_name_the_keys(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_possible_ppo_batches_pass():
    cfg = load_config(None, ["ppo.prompts_per_iteration=8", "ppo.minibatch_size=32"])
    assert cfg.ppo.minibatch_size == 32
    load_config(None, ["resources.num_cpus=3", "resources.address=auto"])  # joins a cluster


def test_toyworld_section_errors_are_prefixed():
    with pytest.raises(ConfigError, match=r"data\.toyworld"):
        load_config(None, ["data.toyworld.min_len=9", "data.toyworld.max_len=3"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_parse_override():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a=[x, y]") == ("a", ["x", "y"])
    assert parse_override("a=null") == ("a", None)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="'ppo' is not a section"):
        load_config(None, ["ppo=1", "ppo.lr=2"])


def test_tuple_fields_from_lists():
    cfg = load_config(None, ["data.toyworld.domains=[sort, rev, copy, max, sum, count]"])
    assert isinstance(cfg.data.toyworld.domains, tuple)


def test_shipped_job_configs_load():
    from pathlib import Path

    from ray_rlhf.config import load_config_with

    configs = sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        cfg, _ = load_config_with(path)
        assert cfg.run.name == path.stem


def test_rm_contrastive_and_meta_sections():
    cfg = load_config(None, ["rm.contrastive.kind=swav"])
    assert cfg.rm.contrastive.weight == 0.1  # the paper's SwAV beta when beta is null
    assert load_config(None, ["rm.contrastive.kind=simcse"]).rm.contrastive.weight == 1.0
    assert (
        load_config(
            None, ["rm.contrastive.kind=simcse", "rm.contrastive.beta=0.3"]
        ).rm.contrastive.weight
        == 0.3
    )
    assert load_config(None).rm.contrastive.weight == 0.0
    meta = ["rm.meta.enabled=true", "data.meta_responses_path=m.jsonl"]
    assert load_config(None, [*meta, "learner.zero_stage=2"]).rm.meta.k == 4
    shared = ["rm.contrastive.kind=simcse", "rm.contrastive.views=shared"]
    assert load_config(None, [*shared, "learner.zero_stage=3"]).rm.contrastive.views == "shared"


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["rm.meta.enabled=true", "data.meta_responses_path=m.jsonl", "learner.zero_stage=3"],
            r"rm\.meta\.enabled: .*not supported with learner\.zero_stage=3",
        ),
        (["rm.meta.enabled=true"], r"data\.meta_responses_path: required when rm\.meta\.enabled"),
        (["rm.meta.k=1"], r"rm\.meta\.k: must be >= 2"),
        (["rm.meta.eta=-1"], r"rm\.meta\.eta: must be >= 0"),
        (["rm.meta.batch_size=3"], r"rm\.meta\.batch_size: must be a multiple of"),
        (
            ["rm.meta.enabled=true", "rm.head=per_position", "segment.reward_granularity=token"],
            r"rm\.meta\.enabled: is implemented for the scalar head only",
        ),
        (["rm.contrastive.kind=moco"], r"rm\.contrastive\.kind: must be one of"),
        (["rm.contrastive.tau=0"], r"rm\.contrastive\.tau: must be > 0"),
        (["rm.contrastive.dropout=1"], r"rm\.contrastive\.dropout: must be in \[0, 1\)"),
        (["rm.contrastive.prototypes=1"], r"rm\.contrastive\.prototypes: must be >= 2"),
        (
            ["rm.contrastive.kind=swav", "learner.zero_stage=3"],
            r"rm\.contrastive\.kind: swav .* ZeRO-3",
        ),
        (
            ["rm.contrastive.kind=simcse", "learner.zero_stage=3"],
            r"rm\.contrastive\.views: forwards .* learner\.zero_stage=3",
        ),
        (
            ["rm.contrastive.kind=simcse", "rm.contrastive.target=differences", "rm.batch_size=2"],
            r"rm\.batch_size: needs >= 2 pairs per learner worker",
        ),
    ],
)
def test_rm_contrastive_and_meta_errors_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_zero_stage_defaults_to_0_for_one_learner_and_2_for_several():
    assert load_config(None, ["learner.num_workers=1"]).learner.zero_stage == 0
    assert load_config(None, ["learner.num_workers=2"]).learner.zero_stage == 2
    explicit = load_config(None, ["learner.num_workers=1", "learner.zero_stage=2"])
    assert explicit.learner.zero_stage == 2
    # The stored config holds the chosen stage, so a resumed run keeps it.
    cfg = load_config(None, ["learner.num_workers=1"])
    assert to_dict(cfg)["learner"]["zero_stage"] == 0
