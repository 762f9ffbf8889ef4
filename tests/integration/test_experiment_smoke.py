"""The experiment runner end to end at the smallest size: the testbed experiment (SFT, a
proxy RM initialized from it, two PPO arms with evaluations from step 0), its report and
JSON, and a rerun that trains nothing."""

from __future__ import annotations

import json

import pytest
import yaml

pytestmark = pytest.mark.integration

TINY = {
    "experiment": {"seeds": [0], "kl_budgets": [0.01, 100.0]},
    "arms": {"vanilla": {}, "vanilla_long": {"ppo.iterations": 3, "ppo.kl.coef": 0.0}},
    "data": {
        "max_prompt_tokens": 32,
        "max_response_tokens": 16,
        "toyworld": {
            "n_sft": 256,
            "n_train_prompts": 16,
            "n_test_prompts": 4,
            "n_pref_train": 128,
            "n_pref_test": 64,
            "n_pref_shifted": 64,
        },
    },
    "sft": {"steps": 20, "batch_size": 16, "log_every": 10, "checkpoint_every": 0},
    "rm": {"steps": 10, "batch_size": 16, "eval_every": 10},
    "rollout": {"kv_cache_mib": 16},
    "ppo": {
        "iterations": 2,
        "prompts_per_iteration": 4,
        "minibatch_size": 16,
        "micro_batch_size": 8,
        "eval_every": 1,
        "checkpoint_every": 10,
    },
}


def test_testbed_experiment_smallest(ray_session, tmp_path):
    from experiments.protocol import load_experiment, run_experiment

    config = tmp_path / "testbed.yaml"
    spec = {**TINY, "run": {"output_dir": str(tmp_path / "runs")}}
    spec["experiment"] = {**TINY["experiment"], "shared_dir": str(tmp_path / "shared")}
    config.write_text(yaml.safe_dump(spec))
    exp = load_experiment("testbed", config, [])
    data = run_experiment(exp)

    run_dir = tmp_path / "runs" / "testbed"
    on_disk = json.loads((run_dir / "testbed.json").read_text())
    assert on_disk["config_sha256"] == exp.config_sha256
    for arm, iterations in (("vanilla", 2), ("vanilla_long", 3)):
        entry = on_disk["arms"][arm]
        assert entry["seeds"] == [0]
        curve = on_disk["curves"][arm][0]
        assert [p["step"] for p in curve] == list(range(iterations + 1))
        # Step 0 is the SFT policy itself: its KL to the reference is zero up to the gap
        # between vLLM's and the learner's logprobs.
        assert abs(curve[0]["kl"]) < 1e-2
        assert entry["sft_true"] == [curve[0]["true"]]
        assert entry["peak_true"] == [max(p["true"] for p in curve)]
        assert 0.0 <= entry["rm_acc_same_style"][0] <= 1.0
        assert set(entry["true_at_kl"]) == {"0.01", "100"}
        assert entry["true_at_kl"]["100"] == [None]  # never reached
    # Both arms share the SFT policy and the RM (same stage settings): one of each.
    assert len(list((tmp_path / "shared" / "sft").iterdir())) == 1
    assert len(list((tmp_path / "shared" / "rm").iterdir())) == 1
    assert "Calibration conditions" in (run_dir / "report.md").read_text()
    assert (run_dir / "gold_vs_kl.png").stat().st_size > 0
    assert data["arms"]["vanilla"]["final_true"] == on_disk["arms"]["vanilla"]["final_true"]

    # A rerun resumes: every (arm, seed) is done, so nothing trains again.
    done = {a: (run_dir / "seed0" / a / "DONE.json").stat().st_mtime for a in exp.arms}
    run_experiment(load_experiment("testbed", config, []))
    assert {a: (run_dir / "seed0" / a / "DONE.json").stat().st_mtime for a in exp.arms} == done
