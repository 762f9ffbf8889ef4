"""RewardPool: copies of `RewardScorer` as Ray actors, fed whole prompt groups.

A batch is split into contiguous shards of prompt groups (`types.group_range`), one per
actor, so every transform that looks across a group (or across the prompts of a shard)
sees whole groups; the shards run in parallel and their rewards are concatenated back in
row order. Actors return only the rewards (`RewardScorer.compute`), not the rollout.

Failure behaviour: each actor has `max_restarts=2` and `max_task_retries=2`. Scoring is a
pure function of the batch (the scorer keeps no state between calls), so a task that Ray
re-issues after a crash gives the same rewards and nothing is counted twice. After every
`score` the pool asks each actor for its process id: a new one means Ray restarted it
(`faults["reward_restarts"]`, one warning line). An actor out of restarts is replaced by a
new one, which scores its shard again (`faults["reward_replacements"]`). The counts are
this copy's (rank 0's in PPO): the pool's membership never changes with the run's control
file, so it needs no owner actor; a replacement made by a learner that then dies dies with
it, and the next copy replaces the dead actor again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.exceptions import ActorDiedError

from ray_rlhf.config import RewardConfig
from ray_rlhf.distributed.runtime import worker_env_vars
from ray_rlhf.reward.rules import absolute_rule_spec, load_rule
from ray_rlhf.reward.scorer import Rewards, RewardScorer, RewardTransform
from ray_rlhf.types import RolloutBatch, ScoredBatch, group_range, select_rollout_groups

logger = logging.getLogger(__name__)

_MAX_RESTARTS = 2
_MAX_TASK_RETRIES = 2
_RemoteScorer = ray.remote(RewardScorer)


def merge_rewards(batch: RolloutBatch, parts: Sequence[Rewards]) -> ScoredBatch:
    """Concatenates shard rewards (in row order) into the `ScoredBatch` of `batch`.

    Args:
        batch: The full batch, N rows.
        parts: Rewards of consecutive row shards covering the N rows; each holds scores
            (n_k,), token_rewards (n_k, T) and the same diagnostics keys, each (n_k,).

    Returns:
        scores (N,), token_rewards (N, T), diagnostics (N,) each.
    """
    keys = parts[0].diagnostics.keys()
    return ScoredBatch(
        rollout=batch,
        scores=torch.cat([p.scores for p in parts]),
        token_rewards=torch.cat([p.token_rewards for p in parts]),
        diagnostics={k: torch.cat([p.diagnostics[k] for p in parts]) for k in keys},
    )


@dataclass(frozen=True)
class PendingScores:
    """Rewards being computed for `batch`, one object ref per shard (in row order)."""

    batch: RolloutBatch
    refs: list[ray.ObjectRef]
    pool: RewardPool

    def result(self, timeout: float | None = None) -> ScoredBatch:
        """Waits for every shard and returns the scored batch (a shard whose actor died
        for good is scored again by its replacement).

        Raises:
            ray.exceptions.GetTimeoutError: If `timeout` seconds pass first.
            ray.exceptions.RayTaskError: Wrapping the scorer's error (e.g. a ValueError
                naming a non-finite row) when scoring fails.
        """
        return merge_rewards(self.batch, self.pool._gather(self, timeout))


def _check_scorable(cfg: RewardConfig) -> None:
    """Fails in the driver, with a plain ValueError, before any actor starts."""
    if cfg.kind == "rule":
        load_rule(cfg.rule)
    else:
        from ray_rlhf.models.checkpoint import validate_model_dir

        validate_model_dir(cfg.model_path)


class RewardPool:
    """`cfg.num_actors` reward actors behind one `score` call.

    Args:
        cfg: Reward config; a `file.py:function` rule is resolved against this process's
            working directory, so actors load the same file wherever they run.
        cpus_per_actor: CPUs each actor requests (also its torch / OpenMP thread count).
        trust_remote_code: Allow custom code from the reward-model directory.
        policy_dir: The policy's model directory, passed to every scorer (lets a reward
            model with another tokenizer re-tokenize; see `ModelSource`).
        transforms: Reward transforms every scorer applies (must be picklable).

    Raises:
        ValueError: If the rule cannot be loaded or the model directory is invalid.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        *,
        cpus_per_actor: int = 1,
        trust_remote_code: bool = False,
        policy_dir: str | None = None,
        transforms: Sequence[RewardTransform] = (),
    ) -> None:
        if cpus_per_actor < 1:
            raise ValueError(f"cpus_per_actor must be >= 1, got {cpus_per_actor}")
        _check_scorable(cfg)
        self.cfg = dataclasses.replace(cfg, rule=absolute_rule_spec(cfg.rule))
        self.cpus_per_actor = cpus_per_actor
        self._scorer_kwargs: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            "threads": cpus_per_actor,
            "policy_dir": policy_dir,
            "transforms": tuple(transforms),
        }
        self._actors: list[Any] = []
        self._pids: list[int] = []
        self.faults: collections.Counter[str] = collections.Counter()
        """Recoveries seen by this copy: `reward_restarts` (Ray restarted an actor) and
        `reward_replacements` (an actor out of restarts was replaced)."""
        self.resize(cfg.num_actors)

    @property
    def num_actors(self) -> int:
        """Actors currently in the pool."""
        return len(self._actors)

    def _start_actor(self) -> Any:
        """One scorer actor with this pool's resources, restarts and environment."""
        env = worker_env_vars() | {"OMP_NUM_THREADS": str(self.cpus_per_actor)}
        actor_cls = _RemoteScorer.options(
            num_cpus=self.cpus_per_actor,
            max_restarts=_MAX_RESTARTS,
            max_task_retries=_MAX_TASK_RETRIES,
            runtime_env={"env_vars": env},
        )
        return actor_cls.remote(self.cfg, **self._scorer_kwargs)

    def resize(self, num_actors: int) -> None:
        """Grows (starting actors and waiting until they are ready) or shrinks the pool.

        Raises:
            ValueError: If `num_actors` < 1.
            ray.exceptions.ActorDiedError: If a new actor fails to start.
        """
        if num_actors < 1:
            raise ValueError(f"a reward pool needs at least 1 actor, got {num_actors}")
        while len(self._actors) > num_actors:
            ray.kill(self._actors.pop(), no_restart=True)
            self._pids.pop()
        new = [self._start_actor() for _ in range(num_actors - len(self._actors))]
        described = ray.get([actor.describe.remote() for actor in new])
        self._actors.extend(new)
        self._pids.extend(d["pid"] for d in described)

    def score_async(self, batch: RolloutBatch) -> PendingScores:
        """Starts scoring `batch` and returns at once (overlap it with other work).

        Args:
            batch: N = P * n_samples rows; P prompt groups are split into contiguous shards,
                at most one per actor.

        Returns:
            A `PendingScores`; `.result()` is the `ScoredBatch`, rows in `batch` order.

        Raises:
            ValueError: If the batch is empty or its rows do not form whole prompt groups.
        """
        groups = len(batch.prompt_ids)
        if groups == 0 or batch.num_samples != groups * batch.n_samples:
            raise ValueError(
                f"batch of {batch.num_samples} rows is not {groups} prompt group(s) x "
                f"{batch.n_samples} samples (or is empty)"
            )
        world = min(self.num_actors, groups)
        return PendingScores(batch, [self._submit(batch, k, world) for k in range(world)], self)

    def _submit(self, batch: RolloutBatch, k: int, world: int) -> ray.ObjectRef:
        """Actor k's share (of `world` contiguous shares of prompt groups) of `batch`."""
        first, last = group_range(len(batch.prompt_ids), k, world)
        shard = select_rollout_groups(batch, first, last)
        return self._actors[k].compute.remote(shard, row_offset=first * batch.n_samples)

    def _gather(self, pending: PendingScores, timeout: float | None) -> list[Rewards]:
        """Every share's rewards; an actor dead for good is replaced and its share
        re-issued; then restarts Ray made are noted (see the module docstring)."""
        parts = []
        for k, ref in enumerate(pending.refs):
            try:
                parts.append(ray.get(ref, timeout=timeout))
            except ActorDiedError:
                self._replace(k)
                parts.append(ray.get(self._submit(pending.batch, k, len(pending.refs))))
        self._note_restarts()
        return parts

    def _replace(self, k: int) -> None:
        self._actors[k] = self._start_actor()
        self._pids[k] = ray.get(self._actors[k].describe.remote())["pid"]
        self.faults["reward_replacements"] += 1
        logger.warning("reward actor %d was out of restarts; replaced by a new one", k)

    def _note_restarts(self) -> None:
        """Counts actors Ray restarted since the last call; an actor that died for good
        after finishing its share (a kill can land between two tasks) is replaced now."""
        refs = [a.describe.remote() for a in self._actors]
        for k, ref in enumerate(refs):
            try:
                pid = ray.get(ref)["pid"]
            except ActorDiedError:
                self._replace(k)
                continue
            if pid != self._pids[k]:
                self.faults["reward_restarts"] += 1
                logger.warning("reward actor %d was restarted by Ray; its task was retried", k)
                self._pids[k] = pid

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        """Scores `batch` across the actors; same result as `RewardScorer.score`."""
        return self.score_async(batch).result()

    def shutdown(self) -> None:
        """Kills every actor (idempotent)."""
        while self._actors:
            ray.kill(self._actors.pop(), no_restart=True)
        self._pids = []
