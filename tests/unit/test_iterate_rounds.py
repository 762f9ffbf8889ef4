"""`ray-rlhf iterate` without Ray: its config section and checks, the phase plan and where a
run dir resumes, each round's inputs and phase configs, the meta-response file and the
report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_rlhf.cli import parse_config
from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.loops.common import RunDirError
from ray_rlhf.loops.iterate import write_meta_responses
from ray_rlhf.loops.iterate_plan import (
    META_FILE,
    TRUTH_RULE,
    UNSCORED_RULE,
    Phase,
    done_phases,
    phase_plan,
    ppo_config,
    resume_point,
    rm_config,
    round_inputs,
    sample_rows,
    samples_config,
)

META = ["rm.meta.enabled=true"]


def iterate_config(*overrides: str):
    return load_config(None, ["iterate={}", *overrides])


# ----------------------------------------------------------------------------- config


def test_the_command_sets_the_section_and_meta_rm_needs_no_responses_file():
    command, cfg = parse_config(["iterate", *META])
    assert command == "iterate" and cfg.run.name == "iterate"
    assert (cfg.iterate.rounds, cfg.iterate.sample_prompts, cfg.iterate.rm_steps) == (3, 256, None)
    assert cfg.iterate.k(cfg.rm.meta.k) == 4  # samples_per_prompt null: rm.meta.k
    assert load_config(None).iterate is None  # other commands: no section
    with pytest.raises(ConfigError, match=r"data\.meta_responses_path: required"):
        load_config(None, META)  # train-rm still needs the file


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["iterate.rounds=0"], r"iterate\.rounds: must be >= 1"),
        (["iterate.roundz=2"], r"iterate\.roundz: unknown key \(did you mean 'rounds'\?\)"),
        (["iterate.samples_per_prompt=1"], r"iterate\.samples_per_prompt: must be >= 2"),
        (["iterate.sample_prompts=-1"], r"iterate\.sample_prompts: must be >= 0"),
        (["iterate.rm_steps=0"], r"iterate\.rm_steps: must be > 0"),
        (["data.meta_responses_path=m.jsonl"], r"data\.meta_responses_path: must be unset"),
        (["rm.init_path=runs/rm/reward_model"], r"rm\.init_path: .* reward\.model_path"),
        (["contrastive.enabled=true", "contrastive.baselines_path=b"], "contrastive.enabled"),
        (["rm.head=per_position", "segment.reward_granularity=token"], r"rm\.head: .*scalar"),
        (
            ["segment.reward_granularity=segment", "ppo.advantage=gae"],
            r"segment\.reward_granularity: must be 'bandit' under iterate",
        ),
        ([*META, "iterate.samples_per_prompt=2"], r"iterate\.samples_per_prompt: 2 .* rm\.meta\.k"),
    ],
)
def test_config_errors_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        iterate_config(*overrides)


def test_shipped_iterate_config_loads():
    cfg = load_config(Path(__file__).parents[2] / "jobs/configs/iterate_toy.yaml")
    assert cfg.iterate.rounds == 3 and cfg.rm.meta.enabled and cfg.iterate.rm_steps == 200


# ------------------------------------------------------------------- plan and resume


def test_phase_plan_runs_sft_first_only_without_model_path():
    keys = [p.key for p in phase_plan(2, sft=True)]
    assert keys == ["sft"] + [f"round_{r}/{n}" for r in (1, 2) for n in ("samples", "rm", "ppo")]
    assert [p.key for p in phase_plan(1, sft=False)] == [
        "round_1/samples",
        "round_1/rm",
        "round_1/ppo",
    ]
    assert str(Phase(2, "rm")) == "round 2 rm" and Phase(2, "rm").dir(Path("r")) == Path(
        "r/round_2/rm"
    )


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        ([], "sft"),
        (["sft"], "round_1/samples"),
        (["sft", "round_1/samples", "round_1/rm"], "round_1/ppo"),
        (["sft", "round_1/samples", "round_1/rm", "round_1/ppo"], "round_2/samples"),
        (["sft", "round_1/samples", "round_1/rm", "round_1/ppo", "round_2/samples"], "round_2/rm"),
    ],
)
def test_a_run_dir_resumes_at_its_first_phase_without_done_json(tmp_path, done, expected):
    plan = phase_plan(2, sft=True)
    for key in done:
        (tmp_path / key).mkdir(parents=True)
        (tmp_path / key / "DONE.json").write_text("{}")
    (tmp_path / "round_2" / "ppo").mkdir(parents=True)  # started, not done: resumed
    assert done_phases(tmp_path, plan) == set(done)
    assert resume_point(plan, done_phases(tmp_path, plan)).key == expected


def test_a_finished_plan_has_no_resume_point_and_gaps_are_refused():
    plan = phase_plan(2, sft=False)
    assert resume_point(plan, {p.key for p in plan}) is None
    with pytest.raises(RunDirError, match=r"round_2/samples finished .* round_1/ppo did not"):
        resume_point(plan, {"round_1/samples", "round_1/rm", "round_2/samples"})


def test_round_inputs_chain_the_rounds(tmp_path):
    pi0, rm0 = tmp_path / "sft" / "policy", tmp_path / "rm0"
    first = round_inputs(tmp_path, 1, pi0, None)
    assert (first.policy, first.rm_init) == (pi0, None)
    assert round_inputs(tmp_path, 1, pi0, rm0).rm_init == rm0
    third = round_inputs(tmp_path, 3, pi0, rm0)
    assert third.policy == tmp_path / "round_2" / "ppo" / "ppo_policy"
    assert third.rm_init == tmp_path / "round_2" / "rm" / "reward_model"


def test_sample_rows_are_a_seeded_sorted_draw_per_round():
    assert sample_rows(5, 0, 0, 1) == sample_rows(5, 9, 0, 1) == [0, 1, 2, 3, 4]
    rows = sample_rows(100, 10, 0, 1)
    assert len(rows) == 10 == len(set(rows)) and rows == sorted(rows)
    assert sample_rows(100, 10, 0, 1) == rows  # a resumed round draws the same prompts
    assert sample_rows(100, 10, 0, 2) != rows and sample_rows(100, 10, 1, 1) != rows


# --------------------------------------------------------------------- phase configs


def test_phase_configs_are_plain_configs_of_their_stage(tmp_path):
    cfg = iterate_config(*META, "rm.steps=50", "iterate.rm_steps=7", "iterate.samples_per_prompt=6")
    pi0 = tmp_path / "pi0"
    samples = tmp_path / "round_1" / "samples"

    fresh = rm_config(cfg, round_inputs(tmp_path, 1, pi0, None), samples)
    assert (fresh.rm.steps, fresh.rm.init_path, fresh.iterate) == (50, None, None)
    assert fresh.data.meta_responses_path == str(samples / META_FILE)
    continued = rm_config(cfg, round_inputs(tmp_path, 2, pi0, None), samples)
    assert continued.rm.steps == 7
    assert continued.rm.init_path == str(tmp_path / "round_1" / "rm" / "reward_model")
    plain = rm_config(iterate_config(), round_inputs(tmp_path, 1, pi0, None), samples)
    assert plain.data.meta_responses_path is None and not plain.rm.meta.enabled

    toy = samples_config(cfg, samples, truth=True)
    assert (toy.reward.kind, toy.reward.rule, toy.contrastive.k) == ("rule", TRUTH_RULE, 6)
    assert not toy.contrastive.include_eval_prompts and not toy.contrastive.enabled
    assert toy.iterate is None and toy.data.meta_responses_path == str(samples / META_FILE)
    assert samples_config(cfg, samples, truth=False).reward.rule == UNSCORED_RULE
    from ray_rlhf.reward.rules import load_rule

    assert (
        load_rule(UNSCORED_RULE)("any prompt", "any response") == 0.0
    )  # a reward actor can load it

    ppo = ppo_config(cfg, samples, tmp_path / "rm")
    assert (ppo.reward.kind, ppo.reward.model_path, ppo.iterate) == (
        "model",
        str(tmp_path / "rm"),
        None,
    )


def test_meta_responses_keep_prompts_with_k_non_empty_samples(tmp_path):
    import datasets

    rows = [
        {"prompt_id": "a", "prompt": "sort 2 1 =", "responses": ["1 2", "2 1", "1"]},
        {"prompt_id": "b", "prompt": "rev 1 2 =", "responses": ["2 1", " ", "1 2"]},
        {"prompt_id": "c", "prompt": "rev 3 4 =", "responses": ["4 3", ""]},
    ]
    out = tmp_path / META_FILE
    assert write_meta_responses(rows, 2, out) == 2
    kept = datasets.Dataset.from_parquet(str(out)).to_list()
    assert [(r["id"], r["responses"]) for r in kept] == [
        ("a", ["1 2", "2 1", "1"]),
        ("b", ["2 1", "1 2"]),
    ]
    with pytest.raises(ValueError, match="no prompt has 4 non-empty"):
        write_meta_responses(rows, 4, out)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """(policy dir, scalar reward model dir) of the tiny toy-world model."""
    from ray_rlhf.data.toyworld import vocabulary
    from ray_rlhf.models import TinyModelSpec, build_word_tokenizer, write_tiny_model
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    root = tmp_path_factory.mktemp("tiny")
    policy = write_tiny_model(root / "policy", build_word_tokenizer(vocabulary()), TinyModelSpec())
    rm = root / "rm"
    save_hf_model(load_reward_model(policy, seed=3), load_tokenizer(policy), rm)
    return policy, rm


def test_sample_accuracy_compares_the_responses_of_each_prompt(tiny_models):
    from itertools import combinations

    from ray_rlhf.loops.iterate import sample_accuracy
    from ray_rlhf.reward.scorer import ModelSource

    _, rm = tiny_models
    rows = [
        {
            "prompt": "sort 3 1 2 =",
            "responses": ["1 2 3", "3 1 2", "1 2", "2"],
            "rewards": [1.0, 0.33, 0.5, 0.0],
        },
        {"prompt": "rev 4 5 =", "responses": ["5 4", "4 5 !"], "rewards": [1.0, 0.0]},
        {"prompt": "rev 6 7 =", "responses": ["7 6", "7 6 !", "6"], "rewards": [1.0, 1.0, 0.0]},
    ]
    source = ModelSource(str(rm), policy_dir=None, trust_remote_code=False, threads=1)
    agree = pairs = 0
    for row in rows:  # one prompt at a time, every pair with different truth
        n = len(row["responses"])
        s = source.score_texts([row["prompt"]] * n, row["responses"], [True] * n).tolist()
        for i, j in combinations(range(n), 2):
            t = row["rewards"][i] - row["rewards"][j]
            if t != 0:
                pairs += 1
                agree += (s[i] - s[j]) * t > 0
    cfg = iterate_config()
    assert sample_accuracy(rm, rows, cfg) == (pytest.approx(agree / pairs), pairs) and pairs == 9


def test_check_inputs_refuses_a_starting_rm_that_is_no_reward_model(tmp_path, tiny_models):
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.iterate import check_inputs
    from ray_rlhf.models import ModelDirError

    policy, rm = tiny_models
    base = [f"run.output_dir={tmp_path}", f"model.path={policy}", "learner.num_workers=1"]
    base += ["data.toyworld.n_sft=20", "data.toyworld.n_pref_train=40"]
    cfg = iterate_config(*base, f"reward.model_path={rm}", "run.name=ok")
    resolved = check_inputs(cfg, prepare_run_dir(cfg))
    assert resolved.data.max_prompt_tokens is not None and resolved.iterate is not None
    bad = iterate_config(*base, f"reward.model_path={policy}", "run.name=bad")
    with pytest.raises(ModelDirError, match="holds a causal LM, not a reward model"):
        check_inputs(bad, prepare_run_dir(bad))


# ----------------------------------------------------------------------------- report


def _phase(run_dir: Path, key: str, summary: dict) -> None:
    (run_dir / key).mkdir(parents=True, exist_ok=True)
    (run_dir / key / "DONE.json").write_text(json.dumps(summary))


def test_report_has_a_row_per_round_and_cumulative_curves(tmp_path):
    from ray_rlhf.loops.iterate_report import TRUE_KEY, format_table, write_report

    for r in (1, 2):
        _phase(tmp_path, f"round_{r}/samples", {"true_reward": 0.5 + r / 10, "seconds": 60})
        before = None if r == 1 else 0.6
        _phase(
            tmp_path,
            f"round_{r}/rm",
            {
                "eval_accuracy": 0.8,
                "sample_accuracy": 0.7,
                "sample_accuracy_before": before,
                "seconds": 60,
            },
        )
        _phase(
            tmp_path,
            f"round_{r}/ppo",
            {"iterations": 4, TRUE_KEY: 0.6 + r / 10, "eval/sampled/kl_to_ref": 0.1, "seconds": 60},
        )
        rows = [{"step": s, TRUE_KEY: 0.5 + r / 10 + s / 100} for s in (2, 4)]
        metrics = tmp_path / f"round_{r}" / "ppo" / "ppo"
        metrics.mkdir(parents=True)
        (metrics / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    report = write_report(tmp_path, 2, method="MetaRM")
    assert report["curve_key"] == TRUE_KEY and len(report["rounds"]) == 2
    assert [x for x, _ in report["curves"][2]] == [6, 8]  # after round 1's 4 iterations
    table = format_table(report["rounds"], TRUE_KEY)
    assert "| 2 | 0.700 | 0.800 | 0.600 → 0.700 | 0.800 | 0.100 | 3.0 |" in table
    assert "| 1 | 0.600 | 0.800 | 0.700 |" in table
    saved = json.loads((tmp_path / "iterate_report.json").read_text())
    assert len(saved["rounds"]) == 2 and (tmp_path / "iterate_curves.png").is_file()
    assert "iterate_curves.png" in (tmp_path / "iterate_report.md").read_text()
