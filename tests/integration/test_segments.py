"""Segment-level rewards end to end on the tiny model: a per-position RM trains on segmented
pairs (Ray Train, 2 DeepSpeed workers), its normalizer is fitted and stored, then 2 PPO
iterations with dense segment rewards (vLLM rollouts, reward actor, GAE critic)."""

from __future__ import annotations

import json

import pytest

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

_OVERRIDES = [
    "learner.num_workers=2",
    "learner.zero_stage=2",
    "segment.reward_granularity=segment",
    "segment.threshold=3.0",  # untrained tiny model: entropies near ln(24) = 3.18
    "segment.normalizer_samples=200",
    "rm.head=per_position",
    "rm.steps=20",
    "rm.batch_size=16",
    "rm.log_every=10",
    "rm.eval_every=20",
    "data.toyworld.n_sft=100",
    "data.toyworld.n_pref_train=200",
    "data.toyworld.n_pref_test=20",
    "data.toyworld.n_train_prompts=32",
    "data.toyworld.n_test_prompts=8",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "reward.num_actors=1",
    "ppo.advantage=gae",
    "ppo.prompts_per_iteration=8",
    "ppo.minibatch_size=16",
    "ppo.micro_batch_size=8",
    "ppo.eval_every=2",
]


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory, ray_session):
    from ray_rlhf.data.toyworld import vocabulary
    from ray_rlhf.loops import ppo, rm
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight
    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model
    from ray_rlhf.models.tokenizer import build_word_tokenizer

    out = tmp_path_factory.mktemp("segments")
    policy = write_tiny_model(out / "policy", build_word_tokenizer(vocabulary()), TinyModelSpec())
    cfg = load_config(None, [f"run.output_dir={out}", "run.name=seg_it", *_OVERRIDES])
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("rm",), base_dir=policy)
    rm_result = rm.run(cfg, run_dir, policy)
    ppo_cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=seg_ppo",
            *_OVERRIDES,
            "ppo.iterations=2",
            "reward.kind=model",
            f"reward.model_path={rm_result.reward_model_dir}",
            f"model.path={policy}",
        ],
    )
    ppo_result = ppo.run_job(ppo_cfg)  # the command's path: also writes segments.md
    return ppo_cfg, policy, rm_result, ppo_result


def test_segment_rm_trains_and_stores_its_normalizer(segment_run):
    _, policy, rm_result, _ = segment_run
    meta = json.loads((rm_result.reward_model_dir / "ray_rlhf.json").read_text())
    assert meta["head"] == "per_position"
    record = meta["segment"]
    assert record["threshold"] == 3.0
    assert record["reference_dir"] == str(policy.resolve())
    assert record["fit"]["responses"] == 200
    assert all(isinstance(v, float) for v in record["normalizer"].values())


def test_ppo_with_dense_segment_rewards(segment_run):
    cfg, _, _, ppo_result = segment_run
    rows = read_metrics(ppo_result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["reward/segments_per_response"] >= 1
        assert row["reward/segment_mean_length"] >= 1
        assert "reward/segment_by_position/late" in row
        assert row["train/value_loss"] > 0  # GAE critic on the per-token rewards
    assert "eval/sampled/true_reward" in rows[1]


def test_segment_report_renders_boundaries(segment_run, tmp_path):
    from ray_rlhf.loops.segment_report import write_segment_report

    cfg, _, _, ppo_result = segment_run
    assert "|" in (cfg.run.run_dir / "segments.md").read_text()  # written by `ppo.run_job`
    prompts = ["sort 3 1 2 =", "rev 1 2 ="]
    out = write_segment_report(
        cfg, ppo_result.policy_dir, prompts, tmp_path / "segments.md", toyworld=True
    )
    text = out.read_text()
    assert "Spearman(segment reward, true step correctness)" in text
    assert "] |" in text and "mean segment length" in text
    assert "`sort 3 1 2 =` -> `" in text


def test_normalizer_refit_on_reference_policy_samples(segment_run):
    """`fit-segment-normalizer segment.normalizer_source=policy`: the normalizer is refit on
    samples of the reference policy (one per RL prompt, cycling), not on the pairs."""
    from ray_rlhf.loops import segment_normalizer

    cfg, policy, rm_result, _ = segment_run
    refit = load_config(
        None,
        [
            f"run.output_dir={cfg.run.output_dir}",
            "run.name=seg_refit",
            *_OVERRIDES,
            "segment.normalizer_source=policy",
            "segment.normalizer_samples=40",
            f"reward.model_path={rm_result.reward_model_dir}",
        ],
    )
    record = segment_normalizer.run_job(refit)
    meta = json.loads((rm_result.reward_model_dir / "ray_rlhf.json").read_text())
    assert meta["segment"] == record
    assert record["normalizer_source"] == "policy"
    assert record["fit"]["responses"] == 40  # 40 samples over the 32 train prompts
    assert record["fit"]["segments"] >= 40
