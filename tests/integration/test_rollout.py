"""Rollout side: RolloutWorker in-process, the Ray rollout pool, both weight transports.

Every check that weights arrived compares vLLM's sampling logprobs with an HF forward pass
of the same weights on the same tokens (atol 1e-4), and greedy outputs across actors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_rlhf.config import RolloutConfig
from ray_rlhf.data.toyworld import vocabulary
from ray_rlhf.models import build_word_tokenizer, load_policy, position_ids_from_mask
from ray_rlhf.models.factory import write_tiny_model
from ray_rlhf.types import RolloutBatch

pytestmark = pytest.mark.integration

PROMPTS = ["sort 3 1 2 =", "rev 4 5 6 7 =", "copy 9 8 =", "max 2 7 1 =", "sum 1 1 ="]
IDS = [f"p{i}" for i in range(len(PROMPTS))]
MAX_LEN = 48
CFG = RolloutConfig(kv_cache_mib=16, max_restarts=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = build_word_tokenizer(vocabulary())
    return write_tiny_model(tmp_path_factory.mktemp("rollout") / "tiny", tokenizer)


@pytest.fixture(scope="module")
def base_state(model_dir) -> dict[str, torch.Tensor]:
    return load_policy(model_dir).state_dict()


@pytest.fixture(scope="module")
def perturbed_state(base_state) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}


def _greedy(gen, prompts=PROMPTS, ids=IDS) -> RolloutBatch:
    return gen.generate(
        ids, prompts, n_samples=1, max_tokens=8, temperature=0.0, top_p=1.0, seed=None
    )


def _sampled(gen, seed: int = 7) -> RolloutBatch:
    return gen.generate(
        IDS, PROMPTS, n_samples=3, max_tokens=8, temperature=1.0, top_p=1.0, seed=seed
    )


def _assert_logprobs_match_hf(model_dir: Path, state: dict, batch: RolloutBatch) -> None:
    """vLLM's sample_logprobs == HF log-softmax of the sampled tokens (same weights)."""
    model = load_policy(model_dir)
    model.load_state_dict(state)
    mask = batch.attention_mask
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=mask.long(),
            position_ids=position_ids_from_mask(mask),
        ).logits  # (N, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_lp = logprobs.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
    resp = batch.response_mask[:, 1:]
    torch.testing.assert_close(
        batch.sample_logprobs[:, 1:][resp], token_lp[resp], atol=1e-4, rtol=0
    )
    assert (batch.sample_logprobs[~batch.response_mask] == 0).all()


def _assert_layout(batch: RolloutBatch, n_samples: int, prompt_lens: list[int]) -> None:
    n = len(prompt_lens) * n_samples
    assert batch.input_ids.shape[0] == n and batch.n_samples == n_samples
    for name in ("attention_mask", "response_mask", "sample_logprobs"):
        assert getattr(batch, name).shape == batch.input_ids.shape, name
    assert batch.finished.shape == (n,) and len(batch.responses) == n
    lengths = batch.attention_mask.sum(1)
    assert lengths.max() == batch.input_ids.shape[1]  # padded to the longest row only
    for row in range(n):
        p = prompt_lens[row // n_samples]
        real, resp = batch.attention_mask[row], batch.response_mask[row]
        assert real[: lengths[row]].all() and not real[lengths[row] :].any()  # right padded
        assert (
            not resp[:p].any() and resp[p : lengths[row]].all() and not resp[lengths[row] :].any()
        )
        assert (batch.sample_logprobs[row][resp] < 0).all()
        if batch.finished[row]:
            assert batch.input_ids[row, lengths[row] - 1] == 2  # EOS (</s>) ends the row


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def worker(model_dir):
    from ray_rlhf.rollout.worker import RolloutWorker

    w = RolloutWorker(model_dir, CFG, max_model_len=MAX_LEN, seed=0)
    yield w
    w.shutdown()


def test_worker_batch_layout_and_grouping(worker, model_dir, base_state):
    batch = _sampled(worker)
    tokenizer = worker.tokenizer
    prompt_lens = [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
    _assert_layout(batch, 3, prompt_lens)
    assert batch.prompt_ids == IDS and batch.prompts == PROMPTS and batch.policy_version == 0
    for row in range(batch.num_samples):  # rows grouped by prompt, BOS + prompt first
        p = prompt_lens[row // 3]
        prompt = tokenizer(PROMPTS[row // 3])["input_ids"]
        assert batch.input_ids[row, :p].tolist() == prompt
        response = batch.input_ids[row][batch.response_mask[row]].tolist()
        assert batch.responses[row] == tokenizer.decode(response, skip_special_tokens=True)
    again = _sampled(worker)
    assert torch.equal(again.input_ids, batch.input_ids)  # seeded: reproducible
    assert not torch.equal(_sampled(worker, seed=8).input_ids, batch.input_ids)
    _assert_logprobs_match_hf(model_dir, base_state, batch)


def test_worker_load_weights_changes_outputs_and_restores(
    worker, model_dir, base_state, perturbed_state
):
    before = _greedy(worker)
    worker.load_weights(perturbed_state, version=3)
    assert worker.version == worker.weights_version() == 3
    after = _greedy(worker)
    assert after.policy_version == 3
    assert after.responses != before.responses
    _assert_logprobs_match_hf(model_dir, perturbed_state, after)
    _assert_logprobs_match_hf(model_dir, perturbed_state, _sampled(worker))
    worker.load_weights(base_state, version=4)
    restored = _greedy(worker)
    assert restored.responses == before.responses
    assert torch.equal(restored.input_ids, before.input_ids)


def test_worker_rejects_prompt_without_room(worker):
    with pytest.raises(ValueError, match="p0"):
        _greedy(worker, prompts=[" ".join(["1"] * MAX_LEN)], ids=["p0"])


# --------------------------------------------------------------------------- pools


def _actor_versions(pool) -> list[int]:
    import ray

    return ray.get([a.weights_version.remote() for a in pool._actors])


def test_pool_grows_and_new_actor_serves_current_weights(
    ray_session, model_dir, base_state, perturbed_state
):
    from ray_rlhf.distributed.rollout_pool import RolloutPool

    pool = RolloutPool(str(model_dir), CFG, max_model_len=MAX_LEN, seed=0)
    try:
        base = _greedy(pool)
        metrics = pool.update_weights(perturbed_state, version=1)
        assert metrics["sync/bytes"] == sum(t.numel() * 4 for t in base_state.values())
        assert metrics["perf/sync_bytes_per_s"] > 0 and metrics["timing/sync_transfer"] > 0
        one = _greedy(pool)
        assert one.policy_version == 1 and one.responses != base.responses

        pool.resize(2)
        assert pool.size == 2 and _actor_versions(pool) == [1, 1]
        two = _greedy(pool)  # the new actor serves the last prompts
        assert two.policy_version == 1
        assert two.responses == one.responses
        width = one.input_ids.shape[1]
        assert torch.equal(two.input_ids[:, :width], one.input_ids)
        _assert_logprobs_match_hf(model_dir, perturbed_state, _sampled(pool))

        import ray

        ray.kill(pool._actors[1], no_restart=False)  # dies; Ray restarts it with base weights
        after_restart = _greedy(pool)
        assert after_restart.policy_version == 1
        assert after_restart.responses == one.responses
        assert _actor_versions(pool) == [1, 1]
        assert pool.faults == {"rollout_restarts": 1}

        # Dead for good (as after its last restart): the pool replaces it.
        ray.kill(pool._actors[1], no_restart=True)
        replaced = _greedy(pool)
        assert replaced.policy_version == 1 and replaced.responses == one.responses
        assert _actor_versions(pool) == [1, 1]
        assert pool.faults == {"rollout_restarts": 1, "rollout_replacements": 1}

        pool.resize(1)
        assert pool.size == 1 and _greedy(pool).responses == one.responses
    finally:
        pool.shutdown()


@pytest.fixture
def sender(ray_session):
    """An actor standing in for learner rank 0, which already has a default process group.

    It holds its own copy of the pool, as a Ray Train worker would. (Its methods use no
    globals of this test module, which Ray workers cannot import.)
    """
    import ray

    @ray.remote(num_cpus=0)
    class Sender:
        def __init__(self, pool):
            import torch.distributed as dist

            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            self.pool = pool

        def update(self, state, version):
            return self.pool.update_weights(state, version)

        def greedy(self, ids, prompts):
            return self.pool.generate(
                ids, prompts, n_samples=1, max_tokens=8, temperature=0.0, top_p=1.0, seed=None
            )

        def resize(self, n):
            self.pool.resize(n)

        def take(self, key, rank):
            return self.pool.take(key, rank)

    return Sender


def test_broadcast_transport_syncs_every_actor(
    ray_session, sender, model_dir, base_state, perturbed_state
):
    import ray

    from ray_rlhf.distributed.rollout_pool import RolloutPool

    cfg = RolloutConfig(num_actors=2, kv_cache_mib=16)
    pool = RolloutPool(str(model_dir), cfg, max_model_len=MAX_LEN, transport="broadcast")
    learner = sender.remote(pool)
    try:
        base = _greedy(pool)
        first = ray.get(learner.update.remote(perturbed_state, 1))
        assert first["timing/sync_group"] > 0 and first["perf/sync_bytes_per_s"] > 0
        second = ray.get(learner.update.remote(perturbed_state, 2))
        assert second["timing/sync_group"] == 0.0  # group reused
        synced = ray.get(learner.greedy.remote(IDS, PROMPTS))
        assert synced.policy_version == 2 and synced.responses != base.responses
        assert _actor_versions(pool) == [2, 2]
        _assert_logprobs_match_hf(model_dir, perturbed_state, synced)

        ray.get(learner.resize.remote(1))  # membership changed: a new group on a new port
        third = ray.get(learner.update.remote(base_state, 3))
        assert third["timing/sync_group"] > 0
        assert ray.get(learner.greedy.remote(IDS, PROMPTS)).responses == base.responses
    finally:
        ray.kill(learner)
        pool.shutdown()


def test_pool_copies_share_one_owner(ray_session, sender, model_dir, perturbed_state):
    """A copy of the pool in another process (as in a learner worker) grows it, syncs
    weights and takes its share of a batch handed out by another copy, then that process
    dies: the actor it added lives on (the pool's owner actor created it), the driver's copy
    sees both actors and the version, and its shutdown stops both and leaves a copy with no
    actors that refuses work."""
    import time

    import ray
    from ray._private import state

    from ray_rlhf.distributed.rollout_pool import RolloutPool

    pool = RolloutPool(str(model_dir), CFG, max_model_len=MAX_LEN)
    learner = sender.remote(pool)
    try:
        ray.get(learner.resize.remote(2))
        ray.get(learner.update.remote(perturbed_state, 1))
        shares = ["rank 0 keeps this", {"rows": torch.arange(6)}, ["rank 2"]]
        pool.hand_out("ppo/0", shares)
        assert torch.equal(ray.get(learner.take.remote("ppo/0", 1))["rows"], torch.arange(6))
        assert ray.get(learner.take.remote("ppo/0", 2)) == ["rank 2"]
        with pytest.raises(ray.exceptions.RayTaskError, match="KeyError"):
            ray.get(learner.take.remote("ppo/0", 2))  # taken already
        pool.hand_out("ppo/1", ["", "new"])
        with pytest.raises(ray.exceptions.RayTaskError, match="KeyError"):
            ray.get(learner.take.remote("ppo/0", 1))  # a newer batch dropped the old shares
        assert ray.get(learner.take.remote("ppo/1", 1)) == "new"
        ray.kill(learner)
        assert pool.size == 2 and pool.version == 1
        assert _actor_versions(pool) == [1, 1]
        assert _greedy(pool).policy_version == 1
    finally:
        pool.shutdown()
    assert pool.size == 0  # without asking the killed owner
    with pytest.raises(RuntimeError, match="shut down"):
        pool.generate(["p"], ["hi"], n_samples=1, max_tokens=2, temperature=1.0, top_p=1.0, seed=0)
    pool.shutdown()  # a second call does nothing

    def alive() -> list:  # the GCS's actor table (the state API needs the dashboard)
        actors = state.actors().values()
        return [a for a in actors if a["ActorClassName"] == "RolloutActor" and a["State"] != "DEAD"]

    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []


def test_pool_with_unreadable_model_dir_fails_cleanly(ray_session, tmp_path):
    import time

    import ray

    from ray_rlhf.distributed.rollout_pool import RolloutPool

    def settled_cpus(timeout_s: float) -> float:
        # Actors killed by earlier tests release their CPUs asynchronously: wait for them.
        total = ray.cluster_resources()["CPU"]
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        return ray.available_resources().get("CPU", 0)

    cpus = settled_cpus(30)
    with pytest.raises(ray.exceptions.RayActorError, match="missing_model"):
        RolloutPool(str(tmp_path / "missing_model"), CFG, max_model_len=MAX_LEN)
    assert settled_cpus(30) == cpus  # the failed actor was removed, not restarted
