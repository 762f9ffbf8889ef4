"""Rank 0's rollout pipeline in async mode, in-process with fake pools (no Ray actors).

The fake rollout pool samples with the version it serves when a generation is submitted,
as the real actors do (a weights update queues behind a generation in flight), so the
versions below are the ones a real run records.
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch

from ray_rlhf.config import load_config
from ray_rlhf.distributed.ppo_trainer import PromptSet, _launch_ahead, _take_rollout
from ray_rlhf.distributed.rollout_pool import PendingRollout
from ray_rlhf.types import RolloutBatch, ScoredBatch

N_SAMPLES = 2


class FakeRolloutPool:
    def __init__(self) -> None:
        self.version, self.size, self.faults = 0, 1, collections.Counter()
        self.submitted: list[tuple[list[str], int]] = []  # (prompt ids, seed) per submit

    def submit(self, prompt_ids, prompts, **kwargs) -> PendingRollout:
        self.submitted.append((prompt_ids, kwargs["seed"]))
        return PendingRollout(prompt_ids, prompts, kwargs, [], [], self.version)

    def collect(self, pending: PendingRollout) -> RolloutBatch:
        n = len(pending.prompts) * N_SAMPLES
        return RolloutBatch(
            prompt_ids=pending.prompt_ids,
            prompts=pending.prompts,
            responses=["1"] * n,
            input_ids=torch.ones(n, 3, dtype=torch.long),
            attention_mask=torch.ones(n, 3, dtype=torch.bool),
            response_mask=torch.tensor([[False, True, True]] * n),
            sample_logprobs=torch.zeros(n, 3),
            finished=torch.ones(n, dtype=torch.bool),
            n_samples=N_SAMPLES,
            policy_version=pending.version,
        )


class FakeRewardPool:
    faults: dict[str, int] = {}  # no recoveries in-process (never written)

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        zeros = torch.zeros(batch.num_samples)
        return ScoredBatch(batch, zeros, torch.zeros_like(batch.sample_logprobs))


def _setup(tmp_path, *overrides):
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "learner.num_workers=1",
            "ppo.iterations=4",
            "ppo.prompts_per_iteration=4",
            f"rollout.n_samples={N_SAMPLES}",
            "ppo.minibatch_size=8",
            "ppo.micro_batch_size=8",
            "data.max_response_tokens=4",
            *overrides,
        ],
    )
    texts = [f"prompt {i}" for i in range(16)]
    prompts = PromptSet([str(i) for i in range(16)], texts, texts, toyworld=False)
    return cfg, {"rollout": FakeRolloutPool(), "reward": FakeRewardPool()}, prompts


def _run(cfg, pools, prompts, control: Path) -> list[dict]:
    """Rank 0's part of `ppo_train_loop`, with `update_weights` as the sync."""
    rows, ahead = [], None
    for it in range(cfg.ppo.iterations):
        _, metrics = _take_rollout(cfg, pools, prompts, it, ahead, control)
        ahead = _launch_ahead(cfg, pools, prompts, it)
        pools["rollout"].version = it + 1  # the sync after the learn phase
        rows.append(metrics)
    assert ahead is None  # nothing launched past the last iteration
    return rows


def test_async_samples_are_one_version_behind_with_the_same_prompts_and_seeds(tmp_path):
    control = tmp_path / "control.yaml"
    sync_cfg, sync_pools, prompts = _setup(tmp_path)
    sync_rows = _run(sync_cfg, sync_pools, prompts, control)
    async_cfg, async_pools, _ = _setup(tmp_path, "ppo.async_rollouts=true")
    async_rows = _run(async_cfg, async_pools, prompts, control)

    assert [r["rollout/policy_version"] for r in sync_rows] == [0, 1, 2, 3]
    assert [r["rollout/staleness"] for r in sync_rows] == [0, 0, 0, 0]
    # Iteration k (from 0) trains version k on samples of version k - 1; the first
    # iteration has nothing launched ahead and samples now.
    assert [r["rollout/policy_version"] for r in async_rows] == [0, 0, 1, 2]
    assert [r["rollout/staleness"] for r in async_rows] == [0, 1, 1, 1]
    assert not any("rollout/regenerated" in r for r in async_rows)
    # Prompts and seeds of an iteration do not depend on the mode (or on timing).
    assert async_pools["rollout"].submitted == sync_pools["rollout"].submitted
    assert "perf/generate_tokens_per_s" not in async_rows[0]
    assert "perf/generate_tokens_per_s" in sync_rows[0]


def test_a_batch_beyond_max_staleness_is_sampled_again(tmp_path):
    cfg, pools, prompts = _setup(tmp_path, "ppo.async_rollouts=true")
    ahead = _launch_ahead(cfg, pools, prompts, 1)  # iteration 2's, at version 0
    pools["rollout"].version = 2
    _, metrics = _take_rollout(cfg, pools, prompts, 2, ahead, tmp_path / "control.yaml")
    assert metrics["rollout/regenerated"] == 1.0
    assert (metrics["rollout/policy_version"], metrics["rollout/staleness"]) == (2, 0)
    first, again = pools["rollout"].submitted
    assert first == again  # the same prompts and seed
