"""The experiment protocol's pure parts: gold-vs-proxy summaries, loading, conditions."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.protocol import arm_config, load_experiment
from experiments.summary import eval_points, summarize_arm, truth_accuracies, value_at_kl
from ray_rlhf.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TRUE_KEY = "eval/sampled/true_reward"


def _row(step, true, proxy, kl, style):
    return {"step": step, "eval/sampled/true_reward": true, "eval/sampled/proxy_reward": proxy,
            "eval/sampled/kl_to_ref": kl, "eval/sampled/style_rate": style}


CURVE = [_row(0, 0.50, -1.0, 0.0, 0.2), {"step": 1, "reward/mean": 3.0},
         _row(3, 0.60, 0.0, 1.5, 0.3), _row(6, 0.70, 1.0, 2.5, 0.4),
         _row(9, 0.55, 2.0, 5.0, 0.8)]


def test_value_at_kl_interpolates_on_the_first_crossing():
    points = eval_points(CURVE)
    assert value_at_kl(points, 1.0) == pytest.approx(0.50 + (1.0 / 1.5) * 0.10)
    assert value_at_kl(points, 2.0) == pytest.approx(0.65)
    assert value_at_kl(points, 4.0) == pytest.approx(0.70 + (1.5 / 2.5) * -0.15)
    assert value_at_kl(points, 6.0) is None


def test_eval_points_keep_one_row_per_step_the_last_logged():
    rows = [*CURVE, _row(3, 0.99, 0.0, 1.5, 0.3)]  # a resumed run logged step 3 again
    points = eval_points(rows)
    assert [p["step"] for p in points] == [0, 3, 6, 9]
    assert points[1]["true"] == 0.99


def test_summarize_arm_peak_final_and_budgets():
    s = summarize_arm(CURVE, (1.0, 2.0))
    assert (s["sft_true"], s["peak_true"], s["peak_iter"], s["final_true"]) == (
        0.50, 0.70, 6, 0.55)
    assert s["final_style_rate"] == 0.8 and s["final_proxy"] == 2.0
    assert s["true_at_kl"]["2"] == pytest.approx(0.65)


def test_summarize_arm_needs_the_start_measured():
    with pytest.raises(ValueError, match="evaluation at step 0"):
        summarize_arm(CURVE[2:], (1.0,))


def test_load_experiment_seeds_every_arm(tmp_path):
    exp = load_experiment("testbed", ROOT / "experiments/configs/testbed.yaml", [])
    cfg = arm_config(exp.base, exp.arms["vanilla_long"], 7)
    assert (cfg.run.seed, cfg.model.tiny.seed, cfg.data.toyworld.seed) == (7, 7, 7)
    assert cfg.ppo.eval_at_start and cfg.ppo.iterations == 150 and cfg.ppo.kl.coef == 0.0
    assert exp.run_dir == Path("runs/experiments/testbed")
    assert len(exp.config_sha256) == 64


def test_load_experiment_names_a_bad_arm_key(tmp_path):
    path = tmp_path / "x.yaml"
    limits = "data: {max_prompt_tokens: 32, max_response_tokens: 16}\n"
    path.write_text(limits + "arms:\n  a: {ppo.itrations: 3}\n")
    with pytest.raises(ConfigError, match=r"arms\.a: ppo\.itrations: unknown key"):
        load_experiment("x", path, [])


def test_testbed_conditions_per_seed():
    from experiments.testbed import conditions

    long_ok = [{"step": 0, "true": .5, "proxy": 0, "style": .2},
               {"step": 9, "true": .7, "proxy": 1, "style": .3},
               {"step": 20, "true": .65, "proxy": 2, "style": .9}]
    long_bad = [{"step": 0, "true": .5, "proxy": 0, "style": .2},
                {"step": 20, "true": .7, "proxy": 2, "style": .9}]  # still at its peak
    data = {"arms": {
        "vanilla": {"seeds": [0, 1], "rm_acc_same_style": [0.81, 0.79],
                    "peak_true": [0.60, 0.60], "sft_true": [0.54, 0.56]},
        "vanilla_long": {"seeds": [0, 1], "curves": [long_ok, long_bad]},
    }}
    assert conditions(data) == {"i": [True, False], "ii": [True, False], "iii": [True, False]}


def test_load_experiment_needs_fixed_token_limits(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("arms:\n  a: {}\n")
    with pytest.raises(ConfigError, match=r"data\.max_prompt_tokens: experiments fix"):
        load_experiment("x", path, [])


def test_truth_accuracies_skip_ties_and_split_by_style():
    margins = [1.0, -2.0, 5.0, -0.1, 0.3]
    truth = [0.5, -0.2, 0.0, 0.3, -0.4]  # pair 2 is a tie; pairs 0, 1 right, 3 and 4 wrong
    same = [True, False, True, True, False]
    acc = truth_accuracies(margins, truth, same)
    assert acc["all"] == pytest.approx(2 / 4)
    assert acc["same_style"] == pytest.approx(1 / 2)  # pairs 0 (right) and 3 (wrong)


def test_relative_outputs_refused_inside_a_ray_job(monkeypatch):
    from ray_rlhf.loops.common import IN_RAY_JOB

    monkeypatch.setenv(IN_RAY_JOB, "{}")
    with pytest.raises(ConfigError, match=r"run\.output_dir: 'runs/experiments' is relative"):
        load_experiment("testbed", ROOT / "experiments/configs/testbed.yaml", [])
    exp = load_experiment("testbed", ROOT / "experiments/configs/testbed.yaml",
                          ["run.output_dir=/tmp/x", "experiment.shared_dir=/tmp/y"])
    assert exp.run_dir == Path("/tmp/x/testbed")


def test_publish_copies_report_json_plot_and_appends_notes(tmp_path):
    from experiments.run import publish

    run_dir, out = tmp_path / "run", tmp_path / "docs"
    run_dir.mkdir()
    out.mkdir()
    (run_dir / "report.md").write_text("# R\n![gold vs KL](gold_vs_kl.png)\n")
    (run_dir / "x.json").write_text("{}")
    (run_dir / "gold_vs_kl.png").write_bytes(b"png")
    (out / "x_notes.md").write_text("## Notes\n")
    publish("x", run_dir, out)
    assert (out / "x.md").read_text() == "# R\n![gold vs KL](x.png)\n\n## Notes\n"
    assert (out / "x.png").read_bytes() == b"png" and (out / "x.json").read_text() == "{}"


def test_ood_meta_arms_choose_their_reward_stage_and_prompts():
    from experiments.stages import rm_parts, stage_key

    exp = load_experiment("ood_meta", ROOT / "experiments/configs/ood_meta.yaml", [])
    assert exp.arm_reward_models == {"bt_heldout": "rm", "meta_heldout": "meta_rm",
                                     "bt_train": "rm", "meta_train": "meta_rm",
                                     "btmore_heldout": "rm_continued",
                                     "btmore_train": "rm_continued"}
    more = arm_config(exp.base, exp.arms["btmore_heldout"], 0)
    assert (more.rm.steps, more.data.toyworld.ppo_prompts) == (1200, "heldout")
    held = arm_config(exp.base, exp.arms["meta_heldout"], 0)
    train = arm_config(exp.base, exp.arms["bt_train"], 0)
    assert (held.data.toyworld.ppo_prompts, train.data.toyworld.ppo_prompts) == (
        "heldout", "train")
    # PPO's prompts do not key the proxy RM: all four arms share the seed's RM stage, the
    # testbed's own (the testbed config gives no ppo_prompts).
    testbed = load_experiment("testbed", ROOT / "experiments/configs/testbed.yaml", [])
    vanilla = arm_config(testbed.base, testbed.arms["vanilla"], 0)
    assert stage_key(rm_parts(held)) == stage_key(rm_parts(train)) == stage_key(
        rm_parts(vanilla))


def test_testbed_rm_stage_key_is_unchanged_by_options_left_at_their_defaults():
    """Shared RM stages trained before `rm.init_path` existed keep their directories."""
    import dataclasses

    from experiments.stages import rm_parts, stage_key

    testbed = load_experiment("testbed", ROOT / "experiments/configs/testbed.yaml", [])
    vanilla = arm_config(testbed.base, testbed.arms["vanilla"], 0)
    assert vanilla.rm.init_path is None
    assert stage_key(rm_parts(vanilla)) == "670cdf73aecd"
    continued = dataclasses.replace(vanilla.rm, init_path="runs/rm/reward_model")
    assert stage_key(rm_parts(dataclasses.replace(vanilla, rm=continued))) != "670cdf73aecd"
    recomputed = dataclasses.replace(vanilla.learner, gradient_checkpointing=True)
    key = stage_key(rm_parts(dataclasses.replace(vanilla, learner=recomputed)))
    assert key != "670cdf73aecd"


def test_a_continued_rm_arm_trains_on_from_the_seeds_proxy_rm():
    """`experiment.reward_model: rm_continued`: the proxy RM with the shared settings, then
    the arm's `rm` settings starting from it (`rm.init_path`); meta arms start meta-RM from
    the proxy RM; plain arms use the proxy RM."""
    from experiments.protocol import _arm_reward_model

    class Stages:  # records what each stage was asked for
        def __init__(self):
            self.calls = []

        def reward_model(self, cfg, policy):
            self.calls.append(("rm", cfg.rm.steps, cfg.rm.init_path))
            return Path(f"rm_{cfg.rm.steps}_{cfg.rm.init_path}")

        def meta_reward_model(self, cfg, policy, init):
            self.calls.append(("meta_rm", str(init)))
            return Path("meta")

    exp = load_experiment("ood_meta", ROOT / "experiments/configs/ood_meta.yaml", [])
    base_steps = arm_config(exp.base, [], 0).rm.steps
    for arm, want, calls in [
        ("btmore_train", f"rm_1200_rm_{base_steps}_None",
         [("rm", base_steps, None), ("rm", 1200, f"rm_{base_steps}_None")]),
        ("meta_train", "meta", [("rm", base_steps, None), ("meta_rm", f"rm_{base_steps}_None")]),
        ("bt_train", f"rm_{base_steps}_None", [("rm", base_steps, None)]),
    ]:
        stages = Stages()
        cfg = arm_config(exp.base, exp.arms[arm], 0)
        assert _arm_reward_model(exp, stages, arm, 0, cfg, Path("sft")) == Path(want)
        assert stages.calls == calls, arm


def test_segment_arms_that_differ_only_in_the_normalizer_share_the_trained_rm(tmp_path):
    """The normalizer is fitted after training: `segment_policy_norm` refits it on a copy of
    `segment`'s RM (on SFT samples); the token arm trains on another segmentation."""
    from experiments.stages import Stages, rm_parts, stage_key

    exp = load_experiment("segments", ROOT / "experiments/configs/segments.yaml", [])
    cfgs = {arm: arm_config(exp.base, exp.arms[arm], 0) for arm in exp.arms}
    keys = {arm: stage_key(rm_parts(cfg)) for arm, cfg in cfgs.items()}
    assert keys["segment"] == keys["segment_policy_norm"]
    assert len({keys["segment"], keys["token"], keys["bandit"]}) == 3

    class Recording(Stages):  # records the refits; the trained RM is marked done below
        calls: list = []

        def normalized_reward_model(self, cfg, policy, trained):
            self.calls.append((cfg.segment.normalizer_source, trained))
            return Path("normalized")

    trained = tmp_path / "rm" / keys["segment"]
    trained.mkdir(parents=True)
    (trained / "DONE.json").write_text("{}")
    stages = Recording(tmp_path)
    assert stages.reward_model(cfgs["segment"], Path("sft")) == trained / "reward_model"
    assert stages.reward_model(cfgs["segment_policy_norm"], Path("sft")) == Path("normalized")
    assert stages.calls == [("policy", trained / "reward_model")]


def test_an_unknown_reward_stage_is_named(tmp_path):
    path = tmp_path / "x.yaml"
    limits = "data: {max_prompt_tokens: 32, max_response_tokens: 16}\n"
    path.write_text(limits + "arms:\n  a: {experiment.reward_model: magic}\n")
    with pytest.raises(ConfigError, match=r"arms\.a\.experiment\.reward_model: must be one of"):
        load_experiment("x", path, [])


def test_eval_points_and_per_domain_peaks():
    from experiments.ood_meta import extra_json, per_domain, verdict

    rows = [{**_row(0, 0.5, 0.0, 0.0, 0.2), f"{TRUE_KEY}/min": 0.4, f"{TRUE_KEY}/sortd": 0.6},
            {**_row(3, 0.6, 1.0, 1.0, 0.3), f"{TRUE_KEY}/min": 0.7, f"{TRUE_KEY}/sortd": 0.5},
            {**_row(6, 0.55, 2.0, 2.0, 0.4), f"{TRUE_KEY}/min": 0.6, f"{TRUE_KEY}/sortd": 0.5}]
    curve = eval_points(rows)
    assert curve[1]["true/min"] == 0.7
    # KL 1.5 lies halfway between steps 3 (KL 1) and 6 (KL 2).
    assert per_domain(curve, [1.5, 2]) == {
        "min": {"sft": 0.4, "peak": 0.7, "final": 0.6,
                "at_kl": {"1.5": pytest.approx(0.65), "2": pytest.approx(0.6)}},
        "sortd": {"sft": 0.6, "peak": 0.6, "final": 0.5,
                  "at_kl": {"1.5": pytest.approx(0.5), "2": pytest.approx(0.5)}}}
    data = {"kl_budgets": [1.5, 2.0], "arms": {"a": {"curves": [curve, curve[:2]]}}}
    extra = extra_json(data)
    assert extra["domains_kl"] == [1.5, 2.0]
    assert extra["domains"]["a"]["min"] == {  # the second seed never reached KL 1.5
        "sft": [0.4, 0.4], "peak": [0.7, 0.7], "final": [0.6, 0.7],
        "at_kl": {"1.5": [pytest.approx(0.65), None], "2": [pytest.approx(0.6), None]}}
    table = verdict(data)
    assert "| arm | domain | SFT start | peak | final | @ KL 1.5 | @ KL 2 |" in table
    row = "| a | min | 0.400 ± 0.000 | 0.700 ± 0.000 | 0.650 ± 0.071 | n/a (1 not reached) |"
    assert row + " n/a (1 not reached) |" in table


def test_iterate_meta_arms_start_from_the_testbed_stages_and_differ_only_in_metarm():
    import dataclasses

    from experiments.stages import rm_parts, stage_key

    exp = load_experiment("iterate_meta", ROOT / "experiments/configs/iterate_meta.yaml", [])
    plain = arm_config(exp.base, exp.arms["plain"], 0)
    meta = arm_config(exp.base, exp.arms["meta"], 0)
    assert (plain.rm.meta.enabled, meta.rm.meta.enabled) == (False, True)
    assert dataclasses.replace(meta, rm=plain.rm) == plain
    assert plain.iterate.rounds == 3 and plain.iterate.samples_per_prompt == meta.rm.meta.k
    assert stage_key(rm_parts(plain)) == "670cdf73aecd"  # the testbed's seed-0 proxy RM


def _write_round(base, samples_true, before, after, heldout, evals):
    import json

    for name, done in (("samples", {"true_reward": samples_true}),
                       ("rm", {"sample_accuracy_before": before, "sample_accuracy": after,
                               "eval_accuracy": heldout}), ("ppo", {})):
        (base / name).mkdir(parents=True)
        (base / name / "DONE.json").write_text(json.dumps(done))
    (base / "ppo" / "ppo").mkdir()
    rows = [{"step": s, TRUE_KEY: t, "eval/sampled/kl_to_ref": kl,
             "eval/sampled/style_rate": st} for s, t, kl, st in evals]
    rows.insert(1, {"step": 1, "train/kl": 0.1})  # a training row is skipped
    (base / "ppo" / "ppo" / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))


def test_iterate_meta_rounds_table_from_the_phase_summaries(tmp_path):
    from experiments.iterate_meta import format_report, seed_rounds

    run = tmp_path / "seed0" / "meta"
    _write_round(run / "round_1", 0.55, None, 0.70, 0.80,
                 [(0, 0.50, 0.0, 0.2), (5, 0.58, 0.4, 0.3), (15, 0.60, 0.9, 0.4)])
    _write_round(run / "round_2", 0.61, 0.65, 0.68, 0.79,
                 [(0, 0.60, 0.0, 0.4), (15, 0.64, 0.7, 0.5)])
    rows = seed_rounds(run, 2)
    assert rows[0] == {"round": 0, "ppo_true": 0.50, "ppo_style": 0.2, "ppo_kl": 0.0}
    assert rows[1] == {"round": 1, "samples_true": 0.55, "acc_before": None, "acc_after": 0.70,
                       "acc_heldout_pairs": 0.80, "ppo_true": 0.60, "ppo_style": 0.4,
                       "ppo_kl": 0.9}
    assert (rows[2]["acc_before"], rows[2]["ppo_true"], rows[2]["ppo_kl"]) == (0.65, 0.64, 0.7)

    exp = load_experiment("iterate_meta", ROOT / "experiments/configs/iterate_meta.yaml", [])
    data = {"rounds": 2, "arms": {"meta": {"seeds": [0, 1], "per_seed": [rows, rows]}}}
    text = format_report(exp, data)
    zero = "| meta | 0 | 2 | — | — | — | — | 0.500 ± 0.000 | 0.000 ± 0.000 | 0.200 ± 0.000 |"
    assert zero in text
    assert "| meta | 2 | 2 | 0.610 ± 0.000 | 0.650 ± 0.000 | 0.680 ± 0.000 |" in text
    assert "| meta | 1 | 0.500 → 0.600 → 0.640 | 0.700 → 0.680 |" in text


def test_strength_ensemble_diagnostics_by_hand(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from experiments.strength import diagnostics

    # (mu, flipped by the annotator, chosen truth, rejected truth, chosen `!`, rejected `!`);
    # the label is against the truth on rows 0 and 4, a true-reward tie on row 1.
    rows = [(-0.5, True, 0.2, 0.8, 0, 1), (-0.1, False, 0.5, 0.5, 0, 0),
            (-0.2, True, 0.9, 0.1, 0, 1), (0.3, False, 0.8, 0.2, 1, 1), (0.4, True, 0.1, 0.9, 1, 0)]
    rows += [(0.5 + 0.1 * i, False, 0.7, 0.3, 0, 0) for i in range(5)]
    names = ["strength", "label_flipped", "chosen_true_reward", "rejected_true_reward",
             "chosen_style", "rejected_style"]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), path)
    got = diagnostics(path)
    assert got == pytest.approx({
        "negative_share": 0.3, "flipped_share": 0.3,
        "flipped_given_negative": 2 / 3, "flipped_caught": 2 / 3,
        "truth_wrong_given_negative": 1 / 3, "truth_wrong_given_positive": 1 / 7,
        "flipped_given_bottom": 1.0, "truth_wrong_given_bottom": 1.0,  # row 0 alone
        # same style: rows 1, 3, 5-9 (none wrong, none flipped by mu < 0 but the tie row 1);
        # differing: rows 0, 2, 4: wrong 0 and 4; after flip: 2 (flipped away from the truth)
        # and 4 (mu >= 0, kept)
        "truth_wrong_same_style": 0.0, "truth_wrong_after_flip_same_style": 0.0,
        "truth_wrong_diff_style": 2 / 3, "truth_wrong_after_flip_diff_style": 2 / 3,
        "style_against_label_given_negative": 2 / 3,  # rows 0 and 2
        "style_against_label_given_positive": 0.0,
    })
