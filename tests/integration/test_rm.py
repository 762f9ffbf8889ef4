"""Reward model end to end: Ray Train with 2 DeepSpeed ZeRO-2 workers, HF export, scorer."""

from __future__ import annotations

import json

import pytest
import torch

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 400


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, ray_session):
    from ray_rlhf.loops import rm

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=rm_it",
            "learner.num_workers=2",
            "learner.zero_stage=2",
            f"rm.steps={STEPS}",
            "rm.batch_size=32",
            "rm.lr=0.003",
            "rm.log_every=50",
            "rm.eval_every=200",
            "data.toyworld.n_sft=100",
            "data.toyworld.n_pref_train=4000",
            "data.toyworld.n_pref_test=500",
        ],
    )
    return cfg, rm.run_job(cfg)


def test_held_out_accuracy_beats_chance_and_metrics_are_written(rm_run):
    cfg, result = rm_run
    rows = read_metrics(cfg.run.run_dir / "rm")
    assert [r["step"] for r in rows] == list(range(50, STEPS + 1, 50))
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    assert len(evals) == 2  # steps 200 and 400
    assert result.eval_accuracy == evals[-1]
    assert result.eval_accuracy > 0.6, evals
    assert rows[-1]["rm/loss"] < rows[0]["rm/loss"]
    assert all(0 <= r["rm/accuracy"] <= 1 and "rm/margin" in r for r in rows)
    assert (cfg.run.run_dir / "DONE.json").is_file()


def test_exported_reward_model_records_metadata(rm_run):
    from ray_rlhf.models.builders import load_reward_model

    cfg, result = rm_run
    meta = json.loads((result.reward_model_dir / "ray_rlhf.json").read_text())
    assert meta["head"] == "scalar"
    assert meta["base_model"] == str(result.base_dir.resolve())
    assert meta["training"]["steps"] == STEPS
    assert meta["eval_accuracy"] == result.eval_accuracy
    norm = meta["normalization"]
    assert norm["responses"] == 2 * meta["eval_pairs"] and norm["std"] > 0
    last = read_metrics(cfg.run.run_dir / "rm")[-1]
    assert (norm["mean"], norm["std"]) == (last["eval/score_mean"], last["eval/score_std"])
    model = load_reward_model(result.reward_model_dir)
    assert model.config.ray_rlhf_head == "scalar"
    with pytest.raises(ValueError, match="'scalar' reward model"):
        load_reward_model(result.reward_model_dir, head="per_position")


def test_reward_scorer_matches_a_direct_forward(rm_run):
    from ray_rlhf.config import RewardConfig
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.reward.scorer import RewardScorer
    from ray_rlhf.types import RolloutBatch

    _, result = rm_run
    path = str(result.reward_model_dir)
    tokenizer = load_tokenizer(path)
    prompts, responses = ["sort 3 1 2 =", "rev 4 5 6 ="], ["1 2 3", "6 5 4 !", "3 1 2", "4 5"]
    examples = [
        encode_prompt_response(tokenizer, prompts[i // 2], r) for i, r in enumerate(responses)
    ]
    padded = pad_batch(examples, tokenizer.pad_token_id)
    batch = RolloutBatch(
        prompt_ids=["a", "b"],
        prompts=prompts,
        responses=responses,
        sample_logprobs=torch.zeros(padded["input_ids"].shape),
        finished=torch.ones(4, dtype=torch.bool),
        n_samples=2,
        **padded,
    )
    scored = RewardScorer(RewardConfig(kind="model", model_path=path, clip=100.0)).score(batch)
    model = load_reward_model(path).eval()
    with torch.no_grad():
        values = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"].long()
        ).logits.squeeze(-1)  # (4, T)
    last = padded["attention_mask"].sum(dim=1) - 1
    direct = values[torch.arange(4), last]
    torch.testing.assert_close(scored.scores, direct, atol=1e-5, rtol=1e-5)
