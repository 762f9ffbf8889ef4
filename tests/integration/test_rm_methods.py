"""RM methods end to end: an ensemble annotates strengths, strength + prioritized losses train
under Ray Train, the RM scores in a reward actor with prompt-free diagnostics, analyze-rm."""

from __future__ import annotations

import math

import pytest
import torch

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

PAIRS = 300


@pytest.fixture(scope="module")
def strength_run(tmp_path_factory, ray_session):
    from ray_rlhf.loops import strength

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=strength_it",
            "rm.ensemble_members=2",
            "rm.steps=40",
            "rm.batch_size=32",
            "rm.lr=0.003",
            "learner.zero_stage=0",
            f"data.toyworld.n_pref_train={PAIRS}",
            "data.toyworld.label_noise=0.3",
            "data.toyworld.n_sft=100",
        ],
    )
    return cfg, strength.run_job(cfg)


def test_ensemble_of_two_gives_every_pair_a_strength(strength_run):
    from datasets import Dataset

    from ray_rlhf.loops.strength import annotate, read_member_margins

    cfg, summary = strength_run
    data = Dataset.from_parquet(summary["output"])
    assert data.num_rows == PAIRS == summary["pairs"]
    assert {"strength", "strength_std", "label_flipped", "chosen"} <= set(data.column_names)
    ids = list(data["id"])
    members = torch.stack(
        [
            read_member_margins(cfg.run.run_dir / "members" / f"member_{m:02d}.parquet", ids)
            for m in range(2)
        ]
    )
    assert not torch.equal(members[0], members[1])  # different seeds, different models
    torch.testing.assert_close(torch.tensor(data["strength"]), members.mean(0))
    assert all(math.isfinite(s) and s >= 0 for s in data["strength_std"])
    assert 0 <= summary["flip_detection"]["recall"] <= 1
    # A rerun trains nothing (both members are saved) and writes the same strengths.
    again = annotate(cfg, cfg.run.run_dir, cfg.run.run_dir / "base")
    assert again["mean_strength"] == pytest.approx(summary["mean_strength"])


@pytest.fixture(scope="module")
def flip_margin_rm(strength_run, tmp_path_factory):
    from ray_rlhf.loops import rm

    _, summary = strength_run
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=flip_margin_it",
            f"data.preferences_path={summary['output']}",
            "rm.loss=flip_margin",
            "rm.prioritized=true",
            "rm.prompt_free_prompts=3",
            "rm.steps=20",
            "rm.batch_size=32",
            "rm.log_every=10",
            "rm.eval_every=10",
            "learner.num_workers=2",
            "learner.zero_stage=2",
            "data.toyworld.n_sft=100",
        ],
    )
    return cfg, rm.run_job(cfg)


def test_strength_and_prioritized_losses_train_under_ray_train(flip_margin_rm):
    cfg, result = flip_margin_rm
    rows = read_metrics(cfg.run.run_dir / "rm")
    assert [r["step"] for r in rows] == [10, 20]
    assert all(0 < r["rm/flipped"] < 0.6 for r in rows)  # 30% label noise: some mu < 0
    assert all(math.isfinite(r["rm/prompt_free_gap"]) and r["rm/weight_max"] > 1 for r in rows)
    assert 0 <= result.eval_accuracy <= 1


def test_trained_rm_scores_in_a_reward_actor_with_prompt_free_diagnostics(
    flip_margin_rm, ray_session
):
    from ray_rlhf.config import RewardConfig
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch
    from ray_rlhf.distributed.reward_pool import RewardPool
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.reward.decomposition import KEYS, PromptFreeDiagnostics
    from ray_rlhf.reward.scorer import RewardScorer
    from ray_rlhf.types import RolloutBatch

    _, result = flip_margin_rm
    path = str(result.reward_model_dir)
    tokenizer = load_tokenizer(path)
    prompts = ["sort 3 1 2 =", "rev 4 5 6 =", "copy 7 7 ="]
    responses = ["1 2 3", "1 2 3 !", "6 5 4 !", "4 5", "7 7", "7 !"]
    examples = [
        encode_prompt_response(tokenizer, prompts[i // 2], r) for i, r in enumerate(responses)
    ]
    padded = pad_batch(examples, tokenizer.pad_token_id)
    batch = RolloutBatch(
        prompt_ids=["a", "b", "c"],
        prompts=prompts,
        responses=responses,
        sample_logprobs=torch.zeros(padded["input_ids"].shape),
        finished=torch.ones(6, dtype=torch.bool),
        n_samples=2,
        **padded,
    )
    cfg = RewardConfig(kind="model", model_path=path, clip=100.0)
    transforms = [PromptFreeDiagnostics(num_prompts=2)]
    pool = RewardPool(cfg, transforms=transforms)
    try:
        scored = pool.score(batch)
    finally:
        pool.shutdown()
    local = RewardScorer(cfg, transforms=transforms).score(batch)
    torch.testing.assert_close(scored.scores, local.scores)
    for key in KEYS:
        torch.testing.assert_close(scored.diagnostics[key], local.diagnostics[key])
    dr = (
        scored.diagnostics["reward/prompt_free_gap"]
        + scored.diagnostics["reward/prompt_related_gap"]
    )
    raw = scored.diagnostics["reward/raw"]
    torch.testing.assert_close(dr, raw - raw[[1, 0, 3, 2, 5, 4]], atol=1e-4, rtol=0)


def test_analyze_rm_reports_the_prompt_free_share(flip_margin_rm, tmp_path):
    import json

    from ray_rlhf.loops import analyze_rm

    _, result = flip_margin_rm
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=analyze_it",
            f"reward.model_path={result.reward_model_dir}",
            "data.toyworld.n_pref_test=200",
            "data.toyworld.n_sft=100",
            "data.toyworld.n_pref_train=100",
        ],
    )
    summary = analyze_rm.run_job(cfg)
    assert summary["pairs"] == 200
    assert 0 <= summary["prompt_free_share"] <= 1
    assert 0 <= summary["prompt_free_decided"] <= 1
    assert 0 <= summary["truth_accuracy"] <= 1
    assert json.loads((cfg.run.run_dir / "analysis.json").read_text())["pairs"] == 200
    with pytest.raises(ValueError, match="reward.model_path"):
        analyze_rm.run_job(load_config(None, [f"run.output_dir={tmp_path}"]))
