"""Segment rewards around the tiny model: entropies, pair segmentation, the normalizer
record, the PPO transform inside `RewardScorer`, and the config / metadata checks (which
`preflight` runs before Ray starts)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from toy_batches import token_batch

from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.config_checks import check_segment_reward
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
    check_segment_reward_model,
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
        (
            ["segment.threshold=2.0"],
            r"^segment\.threshold: reward model .* was segmented with threshold c=1\.5, but .* "
            r"give c=2\.0; .* set segment\.reward_granularity=segment and segment\.threshold=1\.5",
        ),
        (
            ["segment.reward_granularity=token"],
            r"^segment\.reward_granularity: reward model .* segmented with threshold c=1\.5",
        ),
        (
            ["segment.reward_granularity=bandit"],
            r"^segment\.reward_granularity: 'bandit' .* is a per_position reward model",
        ),
        (
            ["ppo.advantage=rloo"],
            r"^segment\.reward_granularity: 'segment' gives per-token rewards, but "
            r"ppo\.advantage='rloo' sums them .*; set ppo\.advantage=gae",
        ),
        (
            ["reward.kind=rule"],
            r"^segment\.reward_granularity: 'segment' rewards are a per-position reward "
            r"model's values, but reward\.kind='rule'",
        ),
        (["model.path=/elsewhere"], r"^model\.path: /elsewhere is not the reference"),
    ],
)
def test_mismatches_with_the_reward_model_are_config_errors(dirs, extra, message):
    root, _, _, rm_dir, *_ = dirs
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={rm_dir}", *extra)
    with pytest.raises(ConfigError, match=message):
        check_segment_reward_model(cfg)
    with pytest.raises(ConfigError, match=message):  # the transform is never built past it
        build_segment_transform(cfg)


def test_a_scalar_reward_model_gives_no_segment_rewards(dirs, tmp_path):
    root, tokenizer, policy, *_ = dirs
    scalar = save_hf_model(load_reward_model(policy), tokenizer, tmp_path / "scalar")
    for granularity in ("segment", "token"):
        cfg = _cfg(
            root,
            "reward.kind=model",
            f"reward.model_path={scalar}",
            f"segment.reward_granularity={granularity}",
        )
        with pytest.raises(
            ConfigError,
            match=rf"^segment\.reward_granularity: '{granularity}' needs a reward model with a "
            r"value at every position, but reward\.model_path .* is a scalar reward model",
        ):
            check_segment_reward_model(cfg)
    bandit = _cfg(
        root,
        "reward.kind=model",
        f"reward.model_path={scalar}",
        "segment.reward_granularity=bandit",
    )
    assert check_segment_reward_model(bandit) is None
    assert build_segment_transform(bandit) is None


def _edited_rm(rm_dir, out, **record):
    """A copy of `rm_dir` whose segmentation record has `record`'s entries replaced."""
    copy = out / "rm"
    shutil.copytree(rm_dir, copy)
    meta = json.loads((copy / "ray_rlhf.json").read_text())
    meta["segment"] |= record
    (copy / "ray_rlhf.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tokenizer": "0" * 16}, r"^reward\.model_path: the tokenizer of reference model"),
        (
            {"reference_dir": "/no/such/reference"},
            r"^reward\.model_path: reward model .* was segmented with reference model "
            r"/no/such/reference .* unusable now: model dir /no/such/reference does not exist",
        ),
    ],
)
def test_a_changed_reference_model_is_a_config_error(dirs, tmp_path, record, message):
    root, _, _, rm_dir, *_ = dirs
    edited = _edited_rm(rm_dir, tmp_path, **record)
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={edited}")
    with pytest.raises(ConfigError, match=message):
        check_segment_reward_model(cfg)


def test_an_rm_without_a_normalizer_is_an_error(dirs, tmp_path):
    root, tokenizer, policy, *_ = dirs
    rm = load_reward_model(policy, head="per_position")
    bare = save_hf_model(rm, tokenizer, tmp_path / "bare", metadata={"head": "per_position"})
    cfg = _cfg(root, "reward.kind=model", f"reward.model_path={bare}")
    with pytest.raises(ConfigError, match=r"^reward\.model_path: .* fit-segment-normalizer"):
        build_segment_transform(cfg)


def test_config_checks():
    with pytest.raises(ConfigError, match="segment.reward_granularity"):
        load_config(None, ["rm.head=per_position"])
    with pytest.raises(ConfigError, match="threshold"):
        load_config(None, ["segment.threshold=-1"])
    # A config that trains a per-position RM: `reward` and `ppo` keep their defaults ...
    cfg = load_config(None, ["rm.head=per_position", "segment.reward_granularity=token"])
    assert dataclasses.asdict(cfg.segment)["reward_granularity"] == "token"
    # ... so what PPO's segment rewards need is checked for the PPO stages only.
    with pytest.raises(ConfigError, match=r"^segment\.reward_granularity: 'token' rewards"):
        check_segment_reward(cfg)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["reward.kind=rule", "ppo.advantage=gae"], r"reward\.kind='rule' \(a rule\) gives one"),
        (["ppo.advantage=rloo"], r"ppo\.advantage='rloo' sums them"),
        (["ppo.advantage=grpo"], r"ppo\.advantage='grpo' sums them"),
    ],
)
def test_segment_rewards_need_a_model_reward_and_per_token_advantages(overrides, pattern):
    model = ["reward.kind=model", "reward.model_path=/rm", "segment.reward_granularity=segment"]
    with pytest.raises(ConfigError, match=rf"^segment\.reward_granularity: .*{pattern}"):
        check_segment_reward(load_config(None, [*model, *overrides]))
    for advantage in ("gae", "reinforce_pp"):
        check_segment_reward(load_config(None, [*model, f"ppo.advantage={advantage}"]))
    check_segment_reward(load_config(None, ["segment.reward_granularity=bandit"]))


def test_fit_segment_normalizer_checks_its_reward_model_first(dirs, tmp_path):
    """`ray-rlhf fit-segment-normalizer`'s input, before any work: one config error naming
    `reward.model_path` for a missing dir, a scalar RM, an RM that does not record its
    reference model, and one whose reference model is gone."""
    from ray_rlhf.loops.segment_normalizer import per_position_rm_and_reference

    root, tokenizer, policy, rm_dir, *_ = dirs
    scalar = save_hf_model(load_reward_model(policy), tokenizer, tmp_path / "scalar")
    recorded = _edited_rm(rm_dir, tmp_path / "recorded")
    meta = json.loads((recorded / "ray_rlhf.json").read_text())
    (recorded / "ray_rlhf.json").write_text(json.dumps(meta | {"base_model": str(policy)}))
    gone = _edited_rm(rm_dir, tmp_path / "gone")
    (gone / "ray_rlhf.json").write_text(json.dumps(meta | {"base_model": "/no/such/policy"}))
    cases = [
        (tmp_path / "missing", r"model dir .*missing does not exist"),
        (scalar, r"model dir .* holds a 'scalar' reward model, not 'per_position'"),
        (rm_dir, r".* has no ray_rlhf\.json naming the model it was trained from"),
        (gone, r"the reference model /no/such/policy that .* is unusable: model dir"),
    ]
    for path, message in cases:
        cfg = _cfg(root, f"reward.model_path={path}")
        with pytest.raises(ConfigError, match=rf"^reward\.model_path: {message}"):
            per_position_rm_and_reference(cfg)
    cfg = _cfg(root, f"reward.model_path={recorded}")
    assert per_position_rm_and_reference(cfg) == (recorded.resolve(), Path(policy).resolve())
