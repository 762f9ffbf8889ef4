"""Segment rewards around the tiny model: entropies, pair segmentation, the normalizer
record, the PPO transform inside `RewardScorer`, and the config / metadata checks."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from toy_batches import token_batch

from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.data import toyworld
from ray_rlhf.loops.rm import tokenize_pairs
from ray_rlhf.loops.segment_normalizer import fit_and_store, segment_pairs
from ray_rlhf.models.builders import load_policy, load_reward_model
from ray_rlhf.models.checkpoint import save_hf_model
from ray_rlhf.models.factory import write_tiny_model
from ray_rlhf.models.tokenizer import build_word_tokenizer
from ray_rlhf.reward.scorer import RewardScorer
from ray_rlhf.reward.segments import (
    SegmentRewards,
    build_segment_transform,
    segment_batch_metrics,
    token_entropies,
)

FINISHED = (True, True, False, True)  # row 2 was cut at the length limit (no EOS)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny reference policy, a per-position RM from it with a fitted normalizer."""
    root = tmp_path_factory.mktemp("segments")
    tokenizer = build_word_tokenizer(toyworld.vocabulary())
    policy = write_tiny_model(root / "policy", tokenizer)
    rm = load_reward_model(policy, head="per_position", seed=1)
    with torch.no_grad():
        rm.score.weight.mul_(20.0)
    rm_dir = save_hf_model(rm, tokenizer, root / "rm", metadata={"head": "per_position"})
    cfg = _cfg(root)
    dataset = toyworld.build_splits(cfg.data.toyworld).pref_train.select(range(40))
    pairs = segment_pairs(cfg, policy, tokenize_pairs(dataset, tokenizer, 64))
    record = fit_and_store(cfg, rm_dir, policy, pairs)
    return root, tokenizer, policy, rm_dir, pairs, record


def _cfg(root, *extra):
    return load_config(
        None,
        [
            f"run.output_dir={root}",
            "segment.reward_granularity=segment",
            "segment.threshold=1.5",
            "segment.normalizer_samples=60",
            "ppo.advantage=gae",
            *extra,
        ],
    )


def test_token_entropies_match_a_direct_softmax(dirs):
    _, tokenizer, policy, *_ = dirs
    batch = token_batch(tokenizer, FINISHED)
    model = load_policy(policy).eval()
    got = token_entropies(model, batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids[:1], attention_mask=batch.attention_mask[:1])
    p = logits.logits.softmax(-1)[0]
    expected = -(p * p.log()).sum(-1)
    n = int(batch.attention_mask[0].sum())
    assert torch.allclose(got[0, :n], expected[:n], atol=1e-5)


def test_pairs_are_segmented_and_the_record_is_stored(dirs):
    _, _, policy, rm_dir, pairs, record = dirs
    for side in ("chosen", "rejected"):
        ends, resp = pairs[f"{side}_segment_ends"], pairs[f"{side}_response_mask"]
        assert ends.shape == resp.shape and not ends[~resp].any()
        assert (ends.sum(1) >= 1).all()
    meta = json.loads((rm_dir / "ray_rlhf.json").read_text())
    assert meta["head"] == "per_position"  # the existing keys are kept
    assert meta["segment"] == record
    assert record["threshold"] == 1.5 and record["reference_dir"] == str(policy.resolve())
    assert set(record["normalizer"]) == {
        "mu_slope",
        "mu_intercept",
        "sigma_slope",
        "sigma_intercept",
    }
    assert record["fit"]["responses"] == 60


def test_transform_in_the_scorer_gives_dense_rewards(dirs):
    root, tokenizer, _, rm_dir, *_ = dirs
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={rm_dir}", "reward.clip=1000")
    transform = build_segment_transform(cfg)
    assert isinstance(transform, SegmentRewards)
    scorer = RewardScorer(cfg.reward, transforms=[transform])
    batch = token_batch(tokenizer, FINISHED)
    scored = scorer.score(batch)
    dense, mask = scored.token_rewards, batch.response_mask
    assert not dense[~mask].any()
    assert torch.allclose(dense.sum(dim=1), scored.scores, atol=1e-4)
    eos = mask & ~torch.roll(mask, -1, dims=1)  # last response token of each row
    finished = batch.finished
    assert not dense[eos & finished[:, None]].any()  # EOS gets no segment reward
    assert dense[2][mask[2]][-1] != 0  # the unfinished row's last token does
    metrics = segment_batch_metrics(scored.diagnostics)
    assert metrics["reward/segments_per_response"] >= 1
    assert metrics["reward/segment_mean_length"] >= 1
    assert "reward/segment_by_position/late" in metrics
    clone = pickle.loads(pickle.dumps(transform))  # the loaded reference is not shipped
    assert clone._model is None and clone == transform


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["segment.threshold=2.0"], "segmented with threshold c=1.5"),
        (["segment.reward_granularity=token"], "segmented with threshold c=1.5"),
        (["segment.reward_granularity=bandit"], "is per_position"),
        (["ppo.advantage=rloo"], "use gae"),
    ],
)
def test_mismatches_with_the_reward_model_are_errors(dirs, extra, message):
    root, _, _, rm_dir, *_ = dirs
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={rm_dir}", *extra)
    with pytest.raises(ValueError, match=message):
        build_segment_transform(cfg)


def test_an_rm_without_a_normalizer_is_an_error(dirs, tmp_path):
    root, tokenizer, policy, *_ = dirs
    rm = load_reward_model(policy, head="per_position")
    bare = save_hf_model(rm, tokenizer, tmp_path / "bare", metadata={"head": "per_position"})
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={bare}")
    with pytest.raises(ValueError, match="fit-segment-normalizer"):
        build_segment_transform(cfg)


def test_config_checks():
    with pytest.raises(ConfigError, match="segment.reward_granularity"):
        load_config(None, ["rm.head=per_position"])
    with pytest.raises(ConfigError, match="threshold"):
        load_config(None, ["segment.threshold=-1"])
    cfg = load_config(None, ["rm.head=per_position", "segment.reward_granularity=token"])
    assert dataclasses.asdict(cfg.segment)["reward_granularity"] == "token"
