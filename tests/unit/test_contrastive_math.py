"""Contrastive rewards (docs/algorithms.md §2): the pure math against hand-computed tensors, the
baseline file's validation, the reward transform, and the baseline job's shard logic."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from ray_rlhf.algo.advantages import group_normalized_advantages, rloo_advantages
from ray_rlhf.algo.contrastive import (
    contrastive_scores,
    mean_baseline,
    median_baseline,
    quantile_baseline,
    subtract_at_last_token,
    within_prompt_variance,
)
from ray_rlhf.config import ConfigError, ContrastiveConfig, RewardConfig, load_config
from ray_rlhf.data.errors import DataValidationError
from ray_rlhf.reward.contrastive import (
    ContrastiveTransform,
    check_coverage,
    load_baselines,
)
from ray_rlhf.reward.scorer import RewardContext, Rewards, RewardScorer
from ray_rlhf.types import RolloutBatch

NAN = math.nan
# 3 prompts x k = 4 baseline rewards; prompt 1 lost its last sample, prompt 2 two samples.
REWARDS = torch.tensor([[1.0, 4.0, 2.0, 3.0], [5.0, -1.0, 2.0, NAN], [0.5, NAN, 1.5, NAN]])
VALID = ~torch.isnan(REWARDS)


# --------------------------------------------------------------------------- math


def test_mean_ignores_failed_samples():
    # (1+4+2+3)/4, (5-1+2)/3, (0.5+1.5)/2
    expected = torch.tensor([2.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.equal(mean_baseline(REWARDS, VALID), expected)


def test_median_interpolates_between_the_middle_values():
    # sorted: [1,2,3,4] -> 2.5; [-1,2,5] -> 2; [0.5,1.5] -> 1.0
    expected = torch.tensor([2.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.equal(median_baseline(REWARDS, VALID), expected)


def test_quantiles_by_hand_and_against_torch():
    # q = 0.25: [1,2,3,4] pos 0.75 -> 1.75; [-1,2,5] pos 0.5 -> 0.5; [0.5,1.5] pos 0.25 -> 0.75
    got = quantile_baseline(REWARDS, VALID, 0.25)
    assert torch.allclose(got, torch.tensor([1.75, 0.5, 0.75], dtype=torch.float64))
    assert torch.equal(
        quantile_baseline(REWARDS, VALID, 0.0), torch.tensor([1.0, -1.0, 0.5]).double()
    )
    assert torch.equal(
        quantile_baseline(REWARDS, VALID, 1.0), torch.tensor([4.0, 5.0, 1.5]).double()
    )
    for q in (0.1, 0.5, 0.9):
        ref = [torch.quantile(r[v].double(), q) for r, v in zip(REWARDS, VALID, strict=True)]
        assert torch.allclose(quantile_baseline(REWARDS, VALID, q), torch.stack(ref))


def test_aggregates_reject_a_prompt_without_valid_samples_and_bad_args():
    valid = VALID.clone()
    valid[1] = False
    with pytest.raises(ValueError, match=r"prompt row\(s\) \[1\] have no valid baseline"):
        mean_baseline(REWARDS, valid)
    with pytest.raises(ValueError, match="no valid baseline"):
        median_baseline(REWARDS, valid)
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        quantile_baseline(REWARDS, VALID, 1.5)
    with pytest.raises(ValueError, match=r"want \(P, k\)"):
        mean_baseline(REWARDS[0], VALID[0])


def test_contrastive_scores_subtract_each_prompts_baseline():
    scores = torch.tensor([1.0, 0.0, 3.0, 2.0, -1.0, 0.5])  # 3 prompts x 2 samples
    baselines = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    got = contrastive_scores(scores, baselines, n_samples=2)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([0.5, -0.5, 1.0, 0.0, 0.0, 1.5]))
    with pytest.raises(ValueError, match="6 scores for 3 prompts x 3 samples"):
        contrastive_scores(scores, baselines, n_samples=3)


def test_subtract_at_last_token_keeps_segment_shape_and_shifts_the_sum():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    tokens = torch.tensor([[0, 0.1, 0.2, 0.3, 0], [0, 0, 1.0, -1.0, 0], [0, 0, 0, 0, 0]])
    got = subtract_at_last_token(tokens, torch.tensor([0.5, -2.0, 7.0]), mask)
    expected = torch.tensor([[0, 0.1, 0.2, -0.2, 0], [0, 0, 1.0, 1.0, 0], [0, 0, 0, 0, 0]])
    assert torch.allclose(got, expected)
    assert torch.allclose(got.sum(dim=1), tokens.sum(dim=1) - torch.tensor([0.5, -2.0, 0.0]))


def test_within_prompt_variance_by_hand():
    values = torch.tensor([1.0, 3.0, 0.0, 0.0, -2.0, 2.0])  # groups of 2: var 1, 0, 4
    assert within_prompt_variance(values, 2).item() == pytest.approx(5 / 3)
    assert within_prompt_variance(values, 1).item() == 0.0


def test_group_baselines_cancel_a_per_prompt_constant():
    """Why the evidence run uses a critic: RLOO / GRPO advantages do not change when each
    prompt's rewards are shifted by its own baseline (documented in docs/contrastive.md)."""
    scores = torch.tensor([0.2, 0.9, 0.4, 0.1, 0.8, 0.6])
    shifted = contrastive_scores(scores, torch.tensor([0.3, -0.7]), n_samples=3)
    assert torch.allclose(rloo_advantages(scores, 3), rloo_advantages(shifted, 3), atol=1e-6)
    assert torch.allclose(
        group_normalized_advantages(scores, 3), group_normalized_advantages(shifted, 3), atol=1e-5
    )


def test_contrastive_math_is_pure():
    probe = (
        "import sys, ray_rlhf.algo.contrastive as m; "
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('ray', 'vllm', 'deepspeed', 'transformers', 'datasets')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- baseline file


def write_baselines(path: Path, rows: list[dict]) -> str:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


GOOD_ROWS = [
    {"prompt_id": "p0", "prompt": "sort 3 1 2 =", "rewards": [1.0, 0.0, 0.5, 0.5]},
    {"prompt_id": "p1", "prompt": "rev 1 2 =", "rewards": [0.25, 0.75]},
]


def test_load_baselines_aggregates_with_the_configured_function(tmp_path):
    path = write_baselines(tmp_path / "b.parquet", GOOD_ROWS)
    assert load_baselines(path, ContrastiveConfig()).baselines == {"p0": 0.5, "p1": 0.5}
    q = load_baselines(path, ContrastiveConfig(aggregate="quantile", quantile=0.25))
    assert q.baselines == pytest.approx({"p0": 0.375, "p1": 0.375})
    assert q.aggregate == "quantile(0.25)"
    assert load_baselines(path, ContrastiveConfig(aggregate="median")).prompts["p1"] == "rev 1 2 ="


def test_missing_column_names_file_and_field(tmp_path):
    rows = [{"prompt_id": "p0", "prompt": "sort 3 1 2 =", "reward": [1.0]}]
    path = write_baselines(tmp_path / "b.parquet", rows)
    with pytest.raises(
        DataValidationError, match=r"b\.parquet, field 'rewards': missing column 'rewards'"
    ) as err:
        load_baselines(path, ContrastiveConfig())
    assert err.value.field == "rewards"


def test_non_finite_reward_names_file_row_and_field(tmp_path):
    rows = [*GOOD_ROWS, {"prompt_id": "p2", "prompt": "copy 1 =", "rewards": [0.5, NAN]}]
    path = write_baselines(tmp_path / "b.parquet", rows)
    pattern = r"b\.parquet row 2, field 'rewards': prompt id 'p2': reward 1 is not finite"
    with pytest.raises(DataValidationError, match=pattern):
        load_baselines(path, ContrastiveConfig())


def test_duplicate_prompt_id_and_empty_rewards_are_reported_together(tmp_path):
    rows = [
        *GOOD_ROWS,
        {"prompt_id": "p0", "prompt": "sort 3 1 2 =", "rewards": [1.0]},
        {"prompt_id": "p3", "prompt": "max 1 =", "rewards": []},
    ]
    path = tmp_path / "b.jsonl"  # a user-made file: jsonl works too
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataValidationError) as err:
        load_baselines(str(path), ContrastiveConfig())
    text = str(err.value)
    assert "row 2, field 'prompt_id': duplicate prompt id 'p0', first seen at" in text
    assert "row 3, field 'rewards': prompt id 'p3': expected a non-empty list" in text


def test_contrastive_config_needs_a_path_when_enabled():
    with pytest.raises(ConfigError, match=r"contrastive\.baselines_path: required"):
        load_config(None, ["contrastive.enabled=true"])
    with pytest.raises(ConfigError, match=r"contrastive\.quantile: must be in"):
        load_config(None, ["contrastive.quantile=2"])


# --------------------------------------------------------------------------- transform


def two_by_two() -> RolloutBatch:
    """2 prompts x 2 samples; response tokens at 2..3 (row 0, 2) or 2..4 (row 1, 3)."""
    resp = torch.zeros(4, 6, dtype=torch.bool)
    resp[[0, 2], 2:4] = True
    resp[[1, 3], 2:5] = True
    attention = resp.clone()
    attention[:, :2] = True
    return RolloutBatch(
        prompt_ids=["p0", "p1"],
        prompts=["sort 3 1 2 =", "rev 1 2 ="],
        responses=["1 2 3", "1 3 3 !", "2 1", "2"],
        input_ids=torch.where(attention, 5, 0),
        attention_mask=attention,
        response_mask=resp,
        sample_logprobs=torch.zeros(4, 6),
        finished=torch.ones(4, dtype=torch.bool),
        n_samples=2,
    )


def transform(tmp_path, rows=GOOD_ROWS, **cfg) -> ContrastiveTransform:
    path = write_baselines(tmp_path / "b.parquet", rows)
    return ContrastiveTransform.from_config(ContrastiveConfig(baselines_path=path, **cfg))


def test_scorer_with_contrastive_transform_subtracts_and_reports_diagnostics(tmp_path):
    scorer = RewardScorer(
        RewardConfig(rule="ray_rlhf.data.toyworld:true_reward"), transforms=[transform(tmp_path)]
    )
    scored = scorer.score(two_by_two())
    true = torch.tensor([1.0, 2 / 3, 1.0, 1 / 2])  # toyworld.true_reward of the responses
    assert torch.allclose(scored.scores, true - 0.5)
    d = scored.diagnostics
    assert torch.allclose(d["reward/contrastive_raw"], true)
    assert torch.equal(d["reward/contrastive_baseline"], torch.full((4,), 0.5))
    assert torch.allclose(d["reward/contrastive"], true - 0.5)
    assert torch.equal(d["reward/contrastive_fallback"], torch.zeros(4))
    # Placed on the last response token, like any sequence score.
    assert torch.allclose(scored.token_rewards[:, 3], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.allclose(scored.token_rewards.sum(dim=1), true - 0.5)


def test_token_rewards_of_an_earlier_transform_sum_to_score_minus_baseline(tmp_path):
    batch = two_by_two()
    tokens = batch.response_mask.float() * 0.25  # a segment-style placement
    rewards = Rewards(tokens.sum(dim=1), tokens, {})
    ctx = RewardContext(batch, None, source=None)  # type: ignore[arg-type]
    out = transform(tmp_path).apply(ctx, rewards)
    assert torch.allclose(out.token_rewards.sum(dim=1), tokens.sum(dim=1) - 0.5)
    assert torch.equal(out.token_rewards[0, 2], torch.tensor(0.25))  # earlier tokens kept
    assert torch.allclose(out.scores, tokens.sum(dim=1) - 0.5)


def test_missing_prompt_is_an_error_naming_id_and_file(tmp_path):
    t = transform(tmp_path, rows=GOOD_ROWS[:1])
    rewards = Rewards(torch.ones(4), None, {})
    ctx = RewardContext(two_by_two(), None, source=None, row_offset=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"b\.parquet: prompt id 'p1' \(row 10\) has no baseline"):
        t.apply(ctx, rewards)


def test_missing_prompt_falls_back_to_raw_when_configured(tmp_path, caplog):
    t = transform(tmp_path, rows=GOOD_ROWS[:1], on_missing="raw")
    ctx = RewardContext(two_by_two(), None, source=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="ray_rlhf.reward.contrastive"):
        out = t.apply(ctx, Rewards(torch.ones(4), None, {}))
    assert torch.equal(out.scores, torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.equal(out.diagnostics["reward/contrastive_fallback"], torch.tensor([0, 0, 1.0, 1]))
    assert "keep their raw reward: ['p1']" in caplog.text


def test_prompt_text_mismatch_is_an_error(tmp_path):
    rows = [GOOD_ROWS[0], {**GOOD_ROWS[1], "prompt": "rev 2 1 ="}]
    ctx = RewardContext(two_by_two(), None, source=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"prompt id 'p1' was sampled for prompt 'rev 2 1 ='"):
        transform(tmp_path, rows=rows).apply(ctx, Rewards(torch.ones(4), None, {}))


def test_transform_is_picklable(tmp_path):
    import pickle

    t = pickle.loads(pickle.dumps(transform(tmp_path)))
    assert t.name == "contrastive" and t.store.baselines == {"p0": 0.5, "p1": 0.5}


def test_coverage_check_before_ppo(tmp_path):
    store = load_baselines(write_baselines(tmp_path / "b.parquet", GOOD_ROWS), ContrastiveConfig())
    ok = [(["p0", "p1"], ["sort 3 1 2 =", "rev 1 2 ="])]
    assert check_coverage(store, "error", ok) == []
    more = [*ok, (["t0"], ["copy 1 ="])]
    missing = r"b\.parquet: 1 prompt\(s\) have no baseline, e\.g\. prompt id 't0'"
    with pytest.raises(ValueError, match=missing):
        check_coverage(store, "error", more)
    assert check_coverage(store, "raw", more) == ["t0"]


# --------------------------------------------------------------------------- job pieces


def test_contiguous_chunks():
    from ray_rlhf.loops.baselines import contiguous_chunks

    assert contiguous_chunks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert contiguous_chunks([2, 3, 7, 8, 9], 4) == [[2, 3], [7, 8, 9]]


class FlakyPool:
    """A reward pool whose whole-batch call fails and whose rows fail where NaN."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def score(self, batch: RolloutBatch):
        rows = [self.values[["1 2 3", "1 3 3 !", "2 1", "2"].index(r)] for r in batch.responses]
        if len(rows) > 1 or math.isnan(rows[0]):
            raise ValueError(f"raw score of row 0 is not finite ({rows})")
        return Rewards(torch.tensor(rows), None, {})


def test_failed_samples_are_dropped_and_an_all_failed_prompt_is_reported(tmp_path):
    from ray_rlhf.loops.baselines import (
        FAILED_FILE,
        chunk_rows,
        merge_shards,
        read_shards,
        score_rows,
        shard_features,
        write_parquet_atomic,
    )

    cfg = load_config(None, [])
    batch = two_by_two()
    scores, errors = score_rows(FlakyPool([0.25, 0.75, NAN, NAN]), batch)
    assert scores == [0.25, 0.75, None, None] and len(errors) == 2
    rows = chunk_rows(batch, scores, errors, cfg)
    assert rows[0]["rewards"] == [0.25, 0.75] and rows[0]["baseline"] == 0.5
    assert (
        rows[1]["rewards"] == [] and rows[1]["num_failed"] == 2 and "not finite" in rows[1]["error"]
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet_atomic(rows, shards / "shard-00000.parquet", shard_features())
    (shards / ".shard-00001.parquet.tmp").write_bytes(b"partial")  # an interrupted write
    assert [r["prompt_id"] for r in read_shards(shards)] == ["p0", "p1"]
    failed = merge_shards(
        read_shards(shards), ["p0", "p1"], tmp_path / "b.parquet", tmp_path / FAILED_FILE
    )
    assert failed == ["p1"]
    assert json.loads((tmp_path / FAILED_FILE).read_text())["prompt_id"] == "p1"
    store = load_baselines(str(tmp_path / "b.parquet"), ContrastiveConfig())
    assert store.baselines == {"p0": 0.5}


def test_ppo_checks_the_baseline_file_before_any_actor_starts(tmp_path):
    from types import SimpleNamespace

    from ray_rlhf.loops.ppo import check_baselines

    rows = [*GOOD_ROWS, {"prompt_id": "p1", "prompt": "rev 1 2 =", "rewards": [0.0]}]
    path = write_baselines(tmp_path / "dup.parquet", rows)
    cfg = load_config(None, ["contrastive.enabled=true", f"contrastive.baselines_path={path}"])
    prompts = SimpleNamespace(ids=["p0", "p1"], texts=["sort 3 1 2 =", "rev 1 2 ="])
    with pytest.raises(DataValidationError, match=r"dup\.parquet row 2, field 'prompt_id'"):
        check_baselines(cfg, [prompts])


def test_cli_has_the_sample_baselines_command():
    from ray_rlhf.cli import parse_config

    command, cfg = parse_config(["sample-baselines", "model.path=x", "contrastive.k=8"])
    assert command == "sample-baselines"
    assert cfg.run.name == "baselines" and cfg.contrastive.k == 8
