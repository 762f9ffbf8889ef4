"""Iterative RLHF end to end on the tiny model (toy world): `jobs/iterate.py` trains π₀ by
SFT, then runs 2 rounds of samples -> MetaRM update -> PPO (tiny budgets, 1 learner,
ZeRO-0). It is killed (SIGKILL of its process group) while it waits at the chaos hook after
round 1's RM update; the rerun skips the done phases, resumes at round 1's PPO and finishes
round 2. Every round's RM and policy dir loads with transformers, round 2's RM continued
round 1's, and the report has 2 rounds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from paused_jobs import kill_when_paused

from ray_rlhf.cli import parse_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_PAUSE_TIMEOUT_S = 600
_OVERRIDES = [
    "learner.num_workers=1",
    "learner.zero_stage=0",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "rollout.n_samples=2",
    "reward.num_actors=1",
    "data.toyworld.n_sft=200",
    "data.toyworld.n_train_prompts=16",
    "data.toyworld.n_test_prompts=4",
    "data.toyworld.n_pref_train=120",
    "data.toyworld.n_pref_test=16",
    "sft.steps=40",
    "sft.batch_size=16",
    "sft.log_every=10",
    "rm.steps=20",
    "rm.batch_size=8",
    "rm.log_every=10",
    "rm.eval_every=10",
    "rm.meta.enabled=true",
    "rm.meta.k=2",
    "rm.meta.batch_size=4",
    "ppo.iterations=2",
    "ppo.prompts_per_iteration=4",
    "ppo.minibatch_size=8",
    "ppo.micro_batch_size=8",
    "ppo.eval_every=1",
    "iterate.rounds=2",
    "iterate.sample_prompts=8",
    "iterate.rm_steps=10",
    "iterate.chunk_prompts=4",
]
PHASES = ["sft"] + [f"round_{r}/{p}" for r in (1, 2) for p in ("samples", "rm", "ppo")]


def _done(path: Path) -> dict:
    return json.loads((path / "DONE.json").read_text())


def test_killed_iterate_job_resumes_at_its_phase_and_reports_every_round(tmp_path, ray_session):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from ray_rlhf.loops import iterate

    args = [
        f"run.output_dir={tmp_path}",
        "run.name=iterate_it",
        f"resources.address={ray_session.get_runtime_context().gcs_address}",
        *_OVERRIDES,
    ]
    run_dir = tmp_path / "iterate_it"
    t0 = time.monotonic()
    kill_when_paused(
        "jobs/iterate.py",
        "pause_iterate_after: round_1/rm",
        args,
        run_dir,
        tmp_path / "job.log",
        _PAUSE_TIMEOUT_S,
    )
    killed_after = time.monotonic() - t0
    assert [p for p in PHASES if (run_dir / p / "DONE.json").is_file()] == PHASES[:3]
    rm_done = (run_dir / "round_1/rm/DONE.json").read_bytes()
    assert not (run_dir / "round_1/ppo/ppo_policy").exists()

    _, cfg = parse_config(["iterate", *args])
    result = iterate.run_job(cfg)
    print(f"iterate: killed after {killed_after:.0f} s, rerun {time.monotonic() - t0:.0f} s total")

    logged = (run_dir / "logs" / "driver.log").read_text()  # the job's, then this run's
    assert "iterate: resuming at round 1 ppo (3 of 7 phases done)" in logged
    assert all((run_dir / p / "DONE.json").is_file() for p in PHASES)
    assert (run_dir / "round_1/rm/DONE.json").read_bytes() == rm_done  # not redone
    assert (run_dir / "DONE.json").is_file()

    # Round 1's RM is trained from π₀ for rm.steps, round 2's continues it for rm_steps,
    # with the round's samples as MetaRM's meta responses; PPO chains the policies.
    rm1, rm2 = _done(run_dir / "round_1/rm"), _done(run_dir / "round_2/rm")
    assert (rm1["init"], rm1["steps"]) == (None, 20)
    assert (rm2["init"], rm2["steps"]) == (rm1["reward_model_dir"], 10)
    meta2 = json.loads((run_dir / "round_2/rm/reward_model/ray_rlhf.json").read_text())
    assert meta2["base_model"] == rm1["reward_model_dir"]
    rows = [json.loads(line) for line in (run_dir / "round_2/rm/rm/metrics.jsonl").open()]
    assert rows[-1]["step"] == 10 and "rm/meta_difference" in rows[-1]
    ppo2 = _done(run_dir / "round_2/ppo")
    assert ppo2["start_policy"] == _done(run_dir / "round_1/ppo")["policy_dir"]
    assert _done(run_dir / "round_1/ppo")["start_policy"] == str(run_dir / "sft/policy")
    samples2 = _done(run_dir / "round_2/samples")
    assert samples2["policy"] == ppo2["start_policy"] and samples2["truth"]
    assert samples2["prompts"] == 8 and samples2["meta_prompts"] >= 1

    weights = {}
    for r in (1, 2):
        policy = AutoModelForCausalLM.from_pretrained(run_dir / f"round_{r}/ppo/ppo_policy")
        assert policy.config.vocab_size > 0
        rm = AutoModelForTokenClassification.from_pretrained(run_dir / f"round_{r}/rm/reward_model")
        assert rm.config.num_labels == 1
        weights[r] = rm.state_dict()
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert result.policy_dir == run_dir / "round_2/ppo/ppo_policy"

    report = json.loads((run_dir / "iterate_report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [1, 2]
    assert report["curve_key"] == "eval/sampled/true_reward"
    assert [len(report["curves"][r]) for r in ("1", "2")] == [2, 2]  # eval_every=1
    for row in report["rounds"]:
        rm_row = row["rm"]
        assert 0 <= rm_row["eval_accuracy"] <= 1 and row["samples"]["true_reward"] is not None
        assert (rm_row["sample_accuracy"] is None) == (rm_row["sample_pairs"] == 0)
    assert "| 2 |" in (run_dir / "iterate_report.md").read_text()
    assert (run_dir / "iterate_curves.png").is_file()
