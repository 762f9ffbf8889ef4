"""RewardPool on the embedded Ray: sharded scoring equals in-process scoring; resize; errors."""

from __future__ import annotations

import time

import pytest
import torch

from ray_rlhf.config import RewardConfig
from ray_rlhf.data import toyworld
from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch
from ray_rlhf.models.builders import load_reward_model
from ray_rlhf.models.checkpoint import save_hf_model
from ray_rlhf.models.factory import write_tiny_model
from ray_rlhf.models.tokenizer import build_word_tokenizer
from ray_rlhf.reward import RewardScorer
from ray_rlhf.types import RolloutBatch

pytestmark = pytest.mark.integration

# 3 prompts x 2 samples: 2 actors get groups [0, 2) and [2, 3).
PROMPTS = ["sort 3 1 2 =", "rev 1 2 =", "max 2 5 1 ="]
RESPONSES = ["1 2 3", "1 3 3 !", "2 1", "2", "2 5 5", "2 5 5 !"]


def toy_batch(tokenizer) -> RolloutBatch:
    examples = [
        encode_prompt_response(tokenizer, PROMPTS[row // 2], response)
        for row, response in enumerate(RESPONSES)
    ]
    padded = pad_batch(examples, tokenizer.pad_token_id)
    return RolloutBatch(
        prompt_ids=["a", "b", "c"],
        prompts=PROMPTS,
        responses=RESPONSES,
        sample_logprobs=torch.zeros(padded["input_ids"].shape),
        finished=torch.ones(len(RESPONSES), dtype=torch.bool),
        n_samples=2,
        **padded,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(toyworld.vocabulary())


@pytest.fixture(scope="module")
def rm_cfg(tmp_path_factory, tokenizer) -> RewardConfig:
    root = tmp_path_factory.mktemp("reward_pool")
    rm = load_reward_model(write_tiny_model(root / "policy", tokenizer), seed=1)
    with torch.no_grad():
        rm.score.weight.mul_(20.0)
    rm_dir = save_hf_model(rm, tokenizer, root / "rm")
    return RewardConfig(kind="model", model_path=str(rm_dir), num_actors=2)


def assert_same_scored(got, want):
    assert got.rollout.responses == want.rollout.responses
    assert torch.allclose(got.scores, want.scores, atol=1e-5)
    assert torch.allclose(got.token_rewards, want.token_rewards, atol=1e-5)
    assert got.diagnostics.keys() == want.diagnostics.keys()
    for key, value in want.diagnostics.items():
        assert torch.allclose(got.diagnostics[key], value, atol=1e-5), key


def test_pool_matches_in_process_scorer_and_resizes(ray_session, rm_cfg, tokenizer):
    from ray_rlhf.distributed.reward_pool import RewardPool

    batch = toy_batch(tokenizer)
    want = RewardScorer(rm_cfg).score(batch)
    assert want.scores.std() > 1e-3
    t0 = time.perf_counter()
    pool = RewardPool(rm_cfg)
    t1 = time.perf_counter()
    try:
        assert pool.num_actors == 2
        assert len(pool.score_async(batch).refs) == 2  # both actors got a shard
        got = pool.score(batch)
        t2 = time.perf_counter()
        assert got.rollout is batch
        assert_same_scored(got, want)
        # The PPO trainer's rank 0 is another Ray worker: the pool travels there by value.
        remote_score = ray_session.remote(lambda p, b: p.score(b))
        assert_same_scored(ray_session.get(remote_score.remote(pool, batch)), want)
        pool.resize(1)
        assert pool.num_actors == 1
        assert_same_scored(pool.score(batch), want)
    finally:
        pool.shutdown()
    assert pool.num_actors == 0
    print(f"\n[reward pool] start 2 actors {t1 - t0:.1f}s, score 6 rows {t2 - t1:.2f}s")


def test_rule_pool_names_global_rows_and_resolves_relative_files(
    ray_session, tmp_path, monkeypatch
):
    from ray_rlhf.distributed.reward_pool import RewardPool

    (tmp_path / "pool_rule.py").write_text(
        "from ray_rlhf.data.toyworld import true_reward\n"
        "def r(prompt, response):\n"
        "    return float('nan') if response == '2 5 5 !' else true_reward(prompt, response)\n"
    )
    monkeypatch.chdir(tmp_path)  # a relative file spec, resolved in the driver
    tokenizer = build_word_tokenizer(toyworld.vocabulary())
    batch = toy_batch(tokenizer)
    pool = RewardPool(RewardConfig(rule="pool_rule.py:r", num_actors=2))
    try:
        with pytest.raises(ValueError, match=r"row 5 \(prompt id 'c', response '2 5 5 !'\)"):
            pool.score(batch)
        good = pool.score(select_first_groups(batch, 2))
        truth = [toyworld.true_reward(PROMPTS[i // 2], RESPONSES[i]) for i in range(4)]
        assert torch.allclose(good.scores, torch.tensor(truth))
    finally:
        pool.shutdown()


def select_first_groups(batch: RolloutBatch, groups: int) -> RolloutBatch:
    from ray_rlhf.types import select_rollout_groups

    return select_rollout_groups(batch, 0, groups)


def test_restarted_and_replaced_actors_are_counted_and_score_the_same(ray_session, tokenizer):
    """SIGKILL of actor 1's process: Ray restarts it, the pool notices the new process id
    (`reward_restarts`). Actor 0 killed for good: the pool replaces it and the new actor
    scores its shard again (`reward_replacements`). Rewards stay those of the truth."""
    import os
    import signal

    import ray

    from ray_rlhf.distributed.reward_pool import RewardPool

    batch = toy_batch(tokenizer)
    rows = enumerate(RESPONSES)
    truth = torch.tensor([toyworld.true_reward(PROMPTS[i // 2], r) for i, r in rows])
    pool = RewardPool(RewardConfig(num_actors=2))  # the default rule: the toy world's truth
    try:
        assert torch.allclose(pool.score(batch).scores, truth)
        assert pool.faults == {}
        os.kill(ray.get(pool._actors[1].describe.remote())["pid"], signal.SIGKILL)
        assert torch.allclose(pool.score(batch).scores, truth)
        assert pool.faults == {"reward_restarts": 1}
        ray.kill(pool._actors[0], no_restart=True)
        assert torch.allclose(pool.score(batch).scores, truth)
        assert pool.faults == {"reward_restarts": 1, "reward_replacements": 1}
        assert pool.num_actors == 2
    finally:
        pool.shutdown()


def test_an_actor_killed_after_its_share_is_replaced_before_the_next_batch(ray_session, tokenizer):
    """A kill that lands after an actor returned its share (but before the pool checks its
    process ids) must not fail the batch: the shares are kept, the actor is replaced."""
    import ray

    from ray_rlhf.distributed.reward_pool import RewardPool

    batch = toy_batch(tokenizer)
    rows = enumerate(RESPONSES)
    truth = torch.tensor([toyworld.true_reward(PROMPTS[i // 2], r) for i, r in rows])
    pool = RewardPool(RewardConfig(num_actors=2))
    try:
        pending = pool.score_async(batch)
        ray.get(pending.refs)  # both shares are done
        doomed = pool._actors[0]
        ray.kill(doomed, no_restart=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get(doomed.describe.remote(), timeout=5)
            except ray.exceptions.ActorDiedError:
                break
            time.sleep(0.1)
        assert torch.allclose(pending.result().scores, truth)
        assert pool.faults == {"reward_replacements": 1}
        assert pool._actors[0] is not doomed
        assert torch.allclose(pool.score(batch).scores, truth)
    finally:
        pool.shutdown()


def test_copies_share_one_owner_and_its_fault_counts(ray_session, tokenizer):
    """A copy in another process (as rank 0 gets one) replaces an actor that died for good;
    the driver's pool then sees the replacement and the count, and its shutdown stops it."""
    import ray

    from ray_rlhf.chaos import live_actor_pids
    from ray_rlhf.distributed.reward_pool import RewardPool

    @ray.remote(num_cpus=0)
    def score_in_a_copy(copy: RewardPool, batch: RolloutBatch) -> tuple[list[float], dict]:
        return copy.score(batch).scores.tolist(), dict(copy.faults)

    batch = toy_batch(tokenizer)
    rows = enumerate(RESPONSES)
    truth = [toyworld.true_reward(PROMPTS[i // 2], r) for i, r in rows]
    pool = RewardPool(RewardConfig(num_actors=2))
    try:
        dead = pool._actors[1]
        ray.kill(dead, no_restart=True)
        scores, faults = ray.get(score_in_a_copy.remote(pool, batch))
        assert scores == pytest.approx(truth)
        assert faults == {"reward_replacements": 1}
        assert torch.allclose(pool.score(batch).scores, torch.tensor(truth))
        assert pool.faults == {"reward_replacements": 1}  # counted once, by the copy
        assert pool._actors[1] is not dead and pool.num_actors == 2
        assert len(live_actor_pids("RewardScorer")) == 2
    finally:
        pool.shutdown()
    deadline = time.monotonic() + 30  # the actor table reports kills a moment later
    while live_actor_pids("RewardScorer") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_actor_pids("RewardScorer") == []


def test_a_replacement_that_cannot_be_placed_stops_with_the_key_named(ray_session, tokenizer):
    """An actor out of restarts whose replacement finds no free CPU: after
    `reward.replace_timeout_s` the pool raises `PlacementTimeout` (a user error: the learners
    are not restarted for it) naming the key, and the unplaced actor is not left pending."""
    import ray

    from ray_rlhf.distributed.reward_pool import RewardPool
    from ray_rlhf.errors import PlacementTimeout, UserError

    @ray.remote
    class Blocker:
        def ready(self) -> bool:
            return True

    batch = toy_batch(tokenizer)
    cfg = RewardConfig(num_actors=1, replace_timeout_s=3.0)
    pool = RewardPool(cfg, cpus_per_actor=4)  # of the session's 6 CPUs
    blocker = None
    try:
        doomed = pool._actors[0]
        ray.kill(doomed, no_restart=True)
        with pytest.raises(ray.exceptions.ActorDiedError):
            ray.get(doomed.describe.remote(), timeout=30)
        blocker = Blocker.options(num_cpus=3).remote()  # leaves 3 free: the new actor needs 4
        assert ray.get(blocker.ready.remote(), timeout=60)
        started = time.monotonic()
        with pytest.raises(PlacementTimeout, match=r"reward\.replace_timeout_s=3 s") as caught:
            pool.score(batch)
        assert 3.0 <= time.monotonic() - started < 30.0
        assert isinstance(caught.value, UserError)
        assert pool.faults == {}
    finally:
        if blocker is not None:
            ray.kill(blocker)
        pool.shutdown()
    # The unplaced actor was cancelled: once the blocker is gone nothing takes its CPUs.
    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    assert ray.available_resources().get("CPU", 0) == total
