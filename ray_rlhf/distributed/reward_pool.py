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
new one, which scores its shard again (`faults["reward_replacements"]`).

One owner per pool, as for the rollout pool: a `RewardPoolOwner` actor created with the pool
creates every scorer actor and keeps the membership, process ids and fault counts. A pool
object is picklable (it is handed to the Ray Train workers); every copy reads that state
from the owner before it scores and writes changes back, so a replacement made by rank 0
outlives a learner restart, the counts carry over it, and `shutdown` from the driver stops
every actor the owner created.
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
from ray.exceptions import ActorDiedError, RayActorError

from ray_rlhf.config import RewardConfig
from ray_rlhf.distributed.runtime import worker_env_vars
from ray_rlhf.errors import PlacementTimeout
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


class RewardPoolOwner:
    """Actor body owning a reward pool's scorer actors: creates and kills them (so actors
    added by any copy of the pool outlive that copy's process) and keeps the membership,
    process ids and fault counts that every copy reads."""

    def __init__(self, options: dict, cfg: RewardConfig, scorer_kwargs: dict) -> None:
        self._remote_cls = _RemoteScorer.options(**options)
        self._cfg, self._scorer_kwargs = cfg, scorer_kwargs
        self._members: list[Any] = []
        self._pids: list[int] = []
        self._faults: dict[str, int] = {}

    def start(self, count: int, timeout_s: float | None = None) -> tuple[list[Any], list[int], int]:
        """Create `count` scorer actors and wait up to `timeout_s` (None: no limit) until
        they run: (actors, process ids, how many did not start in time). When any did not,
        none is kept and the first two are empty.

        Raises:
            ray.exceptions.ActorDiedError: If an actor fails to start (e.g. its model
                does not load); none of the new actors is kept.
        """
        new = [self._remote_cls.remote(self._cfg, **self._scorer_kwargs) for _ in range(count)]
        refs = [actor.describe.remote() for actor in new]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            if len(ready) < len(refs):
                self.kill(new)
                return [], [], len(refs) - len(ready)
            described = ray.get(refs)
        except BaseException:
            self.kill(new)
            raise
        return new, [d["pid"] for d in described], 0

    def commit(self, members: list[Any], pids: list[int], faults: dict[str, int]) -> None:
        """Record the pool's current state (after any change by any copy)."""
        self._members, self._pids, self._faults = list(members), list(pids), dict(faults)

    def state(self) -> tuple[list[Any], list[int], dict[str, int]]:
        """(members, their process ids, fault counts) as last committed."""
        return self._members, self._pids, self._faults

    def kill(self, actors: list[Any]) -> None:
        """Kill `actors` for good."""
        for actor in actors:
            ray.kill(actor, no_restart=True)

    def shutdown(self) -> None:
        """Kill every member."""
        members, self._members, self._pids = self._members, [], []
        self.kill(members)


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
        scorer_kwargs: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            "threads": cpus_per_actor,
            "policy_dir": policy_dir,
            "transforms": tuple(transforms),
        }
        options = {
            "num_cpus": cpus_per_actor,
            "max_restarts": _MAX_RESTARTS,
            "max_task_retries": _MAX_TASK_RETRIES,
            "runtime_env": {
                "env_vars": worker_env_vars() | {"OMP_NUM_THREADS": str(cpus_per_actor)}
            },
        }
        owner_cls = ray.remote(RewardPoolOwner).options(num_cpus=0)
        self._owner = owner_cls.remote(options, self.cfg, scorer_kwargs)
        self._actors: list[Any] = []
        self._pids: list[int] = []
        self.faults: collections.Counter[str] = collections.Counter()
        """Recoveries so far, by any copy of the pool: `reward_restarts` (Ray restarted an
        actor) and `reward_replacements` (an actor out of restarts was replaced)."""
        try:
            self.resize(cfg.num_actors)
        except BaseException:
            ray.kill(self._owner)
            raise

    def __getstate__(self) -> dict[str, Any]:
        # A copy reads membership, process ids and fault counts from the owner.
        return self.__dict__ | {"_actors": [], "_pids": [], "faults": collections.Counter()}

    def _refresh(self) -> None:
        """Adopt the owner's state (another copy may have changed it); after `shutdown`,
        this copy has no actors."""
        if self._owner is None:
            return
        actors, pids, faults = ray.get(self._owner.state.remote())
        self._actors, self._pids = list(actors), list(pids)
        self.faults = collections.Counter(faults)

    def _commit(self) -> None:
        ray.get(self._owner.commit.remote(self._actors, self._pids, dict(self.faults)))

    @property
    def num_actors(self) -> int:
        """Actors currently in the pool."""
        self._refresh()
        return len(self._actors)

    def resize(self, num_actors: int) -> None:
        """Grows (starting actors and waiting until they are ready) or shrinks the pool.

        Raises:
            ValueError: If `num_actors` < 1.
            ray.exceptions.ActorDiedError: If a new actor fails to start.
        """
        if num_actors < 1:
            raise ValueError(f"a reward pool needs at least 1 actor, got {num_actors}")
        self._refresh()
        extra = self._actors[num_actors:]
        del self._actors[num_actors:], self._pids[num_actors:]
        ray.get(self._owner.kill.remote(extra))
        if len(self._actors) < num_actors:
            new, pids, _ = ray.get(self._owner.start.remote(num_actors - len(self._actors)))
            self._actors += new
            self._pids += pids
        self._commit()

    def score_async(self, batch: RolloutBatch) -> PendingScores:
        """Starts scoring `batch` and returns at once (overlap it with other work).

        Args:
            batch: N = P * n_samples rows; P prompt groups are split into contiguous shards,
                at most one per actor.

        Returns:
            A `PendingScores`; `.result()` is the `ScoredBatch`, rows in `batch` order.

        Raises:
            ValueError: If the batch is empty or its rows do not form whole prompt groups.
            RuntimeError: If the pool was shut down.
        """
        groups = len(batch.prompt_ids)
        if groups == 0 or batch.num_samples != groups * batch.n_samples:
            raise ValueError(
                f"batch of {batch.num_samples} rows is not {groups} prompt group(s) x "
                f"{batch.n_samples} samples (or is empty)"
            )
        self._refresh()
        if not self._actors:
            raise RuntimeError("the reward pool is shut down")
        world = min(len(self._actors), groups)
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
        timeout_s = self.cfg.replace_timeout_s
        new, pids, missing = ray.get(self._owner.start.remote(1, timeout_s))
        if missing:
            raise PlacementTimeout(
                f"reward actor {k} was out of restarts and its replacement did not start "
                f"within reward.replace_timeout_s={timeout_s:g} s: the cluster has no free "
                "room for it and no autoscaler added a node (raise resources.num_cpus, or "
                "reward.replace_timeout_s if the model loads slowly)"
            )
        [self._actors[k]], [self._pids[k]] = new, pids
        self.faults["reward_replacements"] += 1
        self._commit()
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
                self._commit()

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        """Scores `batch` across the actors; same result as `RewardScorer.score`."""
        return self.score_async(batch).result()

    def shutdown(self) -> None:
        """Kills every actor the owner has, whichever copy added it, then the owner
        (idempotent)."""
        owner, self._owner = self._owner, None
        self._actors, self._pids = [], []
        if owner is None:
            return
        try:
            ray.get(owner.shutdown.remote())
        except RayActorError:
            return  # shut down already (by another copy)
        ray.kill(owner)
