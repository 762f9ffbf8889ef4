"""The rollout pool: `RolloutWorker`s in Ray actors, load-balanced, resizable, kept in sync.

`RolloutActor` and `RolloutPoolOwner` (rollout_actors.py) are the actor bodies; `RolloutPool`
drives the actors from the process that generates and syncs.

Failure handling: actors are created with
`max_restarts=cfg.max_restarts`. When a generate share fails with `RayActorError`, the pool
waits for the restarted actor, re-sends the current weights (through the object store,
whatever the transport) and re-issues that share only; shares that succeeded are kept, so
nothing is counted twice. A share that comes back from a weights version older than the
pool's when it was submitted (a restart that happened between calls) is treated the same
way. New actors from `resize` get the
current weights the same way before they serve. An object-store sync re-sends to an actor
that died during it; a broadcast sync that fails raises (the pool keeps the previous
version) and the next sync rebuilds the group.

One owner per pool: the membership (the actor handles), the weights version and the fault
counts live in a `RolloutPoolOwner` actor created with the pool, and that actor creates
every rollout actor, so actors added by a resize outlive the process that asked for them (a
learner worker that Ray Train restarts). A pool object is picklable (it is handed to the Ray
Train workers); an unpickled copy reads the current membership from the owner before its
first call, and every change is written back. Drive the pool (generate / update_weights /
resize) from one process at a time; `shutdown` from the driver stops every actor the owner
has, whoever added it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from ray_rlhf.config import RolloutConfig
from ray_rlhf.distributed.rollout_actors import RolloutPoolOwner
from ray_rlhf.distributed.runtime import CustomResourceMode, custom_resource, worker_env_vars
from ray_rlhf.distributed.weight_sync import (
    BroadcastTransport,
    ObjectStoreTransport,
    SyncStats,
    WeightsHandle,
)
from ray_rlhf.errors import PlacementTimeout
from ray_rlhf.rollout.worker import concat_rollout_batches
from ray_rlhf.types import RolloutBatch, group_range

Transport = Literal["object_store", "broadcast"]

ROLLOUT_RESOURCE = "rollout"
ROLLOUT_RESOURCE_PER_ACTOR = 0.01
"""Amount of the `rollout` custom resource per actor: it marks the node type (so the
autoscaler adds rollout nodes); CPUs / GPUs limit how many actors fit on a node."""

logger = logging.getLogger(__name__)

_RESTART_WAIT_S = 300.0


@dataclass
class PendingRollout:
    """One `RolloutPool.submit` in flight: a Ray object ref per actor share."""

    prompt_ids: list[str]
    prompts: list[str]
    kwargs: dict[str, Any]
    """Sampling arguments of `RolloutPool.generate` (seed included)."""
    shares: list[tuple[int, int, int]]
    """(actor index, first prompt, last prompt) of each share."""
    refs: list[Any]
    version: int
    """The pool's weights version at submit: no share may come back older."""

    def wait(self) -> None:
        """Block until every share has finished (or failed), without fetching it."""
        ray.wait(self.refs, num_returns=len(self.refs))


class RolloutPool:
    """`cfg.num_actors` rollout actors behind one generate / update_weights interface.

    Args:
        model_dir: policy directory every actor's engine starts from (weights version 0).
        cfg: actor count, resources, restarts, engine settings.
        transport: how `update_weights` moves weights (see weight_sync.py).
        bucket_bytes: weight-sync bucket size.
    """

    def __init__(
        self,
        model_dir: str,
        cfg: RolloutConfig,
        *,
        max_model_len: int,
        dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
        transport: Transport = "object_store",
        bucket_bytes: int = 64 * 2**20,
        custom_resources: CustomResourceMode = "auto",
    ) -> None:
        self.cfg = cfg
        self._custom_resources = custom_resources
        self._actor_args = (model_dir, cfg)
        self._actor_kwargs = {
            "max_model_len": max_model_len,
            "dtype": dtype,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
        }
        self._object_store = ObjectStoreTransport(bucket_bytes)
        self._broadcast = (
            BroadcastTransport(bucket_bytes=bucket_bytes) if transport == "broadcast" else None
        )
        self._actors: list[Any] = []
        self.faults: collections.Counter[str] = collections.Counter()
        """Recoveries so far: `rollout_restarts` (Ray restarted an actor) and
        `rollout_replacements` (an actor out of restarts was replaced)."""
        self._version = 0
        self._handle: WeightsHandle | None = None  # current weights in the object store
        # Broadcast: the weights as last sent (the transport's copy), kept for catch-ups.
        self._state: Mapping[str, torch.Tensor] | None = None
        owner_cls = ray.remote(RolloutPoolOwner).options(num_cpus=0)
        self._owner = owner_cls.remote(self._actor_args, self._actor_kwargs, self._actor_options())
        try:
            self._add_actors(cfg.num_actors)
        except BaseException:
            ray.kill(self._owner)
            raise
        self._pad_id: int = ray.get(self._actors[0].pad_token_id.remote())

    def __getstate__(self) -> dict[str, Any]:
        # A copy reads membership, version and fault counts from the owner; the weights
        # kept for catch-ups stay here (the next update_weights sends them again).
        state = self.__dict__ | {"_handle": None, "_state": None}
        return state | {"_actors": [], "faults": collections.Counter()}

    def _refresh(self) -> None:
        """Adopt the owner's membership, version and fault counts (another copy, e.g. the
        one in a learner worker, may have changed them). Called by every public method.
        After `shutdown` this copy has no actors and asks nobody."""
        if self._owner is None:
            return
        actors, version, faults = ray.get(self._owner.state.remote())
        if version != self._version:  # weights kept here are not the current ones
            self._handle, self._state = None, None
        self._actors, self._version = list(actors), version
        self.faults = collections.Counter(faults)

    def _refresh_open(self) -> None:
        """`_refresh` for a method that needs actors.

        Raises:
            RuntimeError: If the pool was shut down.
        """
        if self._owner is None:
            raise RuntimeError("the rollout pool is shut down")
        self._refresh()

    def _commit(self) -> None:
        ray.get(self._owner.commit.remote(self._actors, self._version, dict(self.faults)))

    @property
    def size(self) -> int:
        """Number of actors."""
        self._refresh()
        return len(self._actors)

    @property
    def version(self) -> int:
        """Version of the weights this pool last sent (0: the base weights)."""
        self._refresh()
        return self._version

    # ----------------------------------------------------------------------- generate

    def generate(
        self,
        prompt_ids: list[str],
        prompts: list[str],
        *,
        n_samples: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> RolloutBatch:
        """Split prompts contiguously over the actors, generate in parallel, concatenate.

        Row r of the result is sampled with seed `seed + r` whatever the pool size (see
        `RolloutWorker.generate`). Returns one `RolloutBatch` in prompt order, padded to the
        longest share's T, all rows from one weights version.
        """
        pending = self.submit(
            prompt_ids,
            prompts,
            n_samples=n_samples,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return self.collect(pending)

    def submit(
        self,
        prompt_ids: list[str],
        prompts: list[str],
        *,
        n_samples: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> PendingRollout:
        """Start `generate` (same arguments) and return at once; `collect` gives the batch.

        Every share runs on the weights its actor serves when it gets there: a later
        `update_weights` queues behind it on the actor (async rollouts rely on this). Call
        `collect` before `resize`: a share belongs to an actor index.
        """
        if not prompts:
            raise ValueError("RolloutPool.generate: no prompts")
        self._refresh_open()
        kwargs = {
            "n_samples": n_samples,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        }
        size = len(self._actors)
        shares = [(k, *group_range(len(prompts), k, size)) for k in range(size)]
        shares = [(k, a, b) for k, a, b in shares if b > a]
        pending = PendingRollout(prompt_ids, prompts, kwargs, shares, [], self._version)
        pending.refs = [self._submit_share(pending, *share) for share in shares]
        return pending

    def _submit_share(self, pending: PendingRollout, k: int, first: int, last: int) -> Any:
        seed, n = pending.kwargs["seed"], pending.kwargs["n_samples"]
        kwargs = pending.kwargs | {"seed": None if seed is None else seed + first * n}
        ids, texts = pending.prompt_ids[first:last], pending.prompts[first:last]
        return self._actors[k].generate.remote(ids, texts, **kwargs)

    def collect(self, pending: PendingRollout) -> RolloutBatch:
        """The batch of a `submit`: failed shares re-issued (see the module docstring).

        A share re-issued after a restart may come back from newer weights than the rest
        (the pool synced while it was in flight); then the whole batch is sampled again, so
        all rows come from one version.
        """
        batches = [
            self._collect(k, ref, lambda s=(k, a, b): self._submit_share(pending, *s), pending)
            for (k, a, b), ref in zip(pending.shares, pending.refs, strict=True)
        ]
        versions = sorted({b.policy_version for b in batches})
        if len(versions) > 1:
            logger.warning("rollout shares came from versions %s; sampling again", versions)
            return self.collect(self.submit(pending.prompt_ids, pending.prompts, **pending.kwargs))
        return concat_rollout_batches(batches, self._pad_id)

    def _collect(
        self, k: int, ref: Any, resubmit: Callable[[], Any], pending: PendingRollout
    ) -> RolloutBatch:
        """Result of actor k's share; after a restart, catch the actor up and re-issue."""
        for _ in range(self.cfg.max_restarts + 1):
            try:
                batch: RolloutBatch = ray.get(ref)
            except RayActorError:
                self._wait_restarted(k)
            else:
                if batch.policy_version >= pending.version:
                    return batch
                self.faults["rollout_restarts"] += 1  # restarted between calls: old weights
                self._commit()
                logger.warning("rollout actor %d was restarted by Ray; catching it up", k)
            self._catch_up([self._actors[k]])
            ref = resubmit()
        raise RuntimeError(f"rollout actor {k} failed {self.cfg.max_restarts + 1} times")

    # ----------------------------------------------------------------------- weights

    def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> dict[str, float]:
        """Send full HF-named weights to every actor; they serve `version` afterwards.

        The pool keeps the weights for catch-ups: the object-store handle, or for the
        broadcast transport the buffers it broadcast, a copy of `state` (so `state` may be
        the learner's live parameters, which change in place when it trains on).

        Returns:
            `timing/sync_transfer` (seconds until every actor serves the new weights),
            `sync/bytes`, `sync/buckets`, `perf/sync_bytes_per_s`, and for the broadcast
            transport `timing/sync_group` (group (re)build, 0 when reused).
        """
        self._refresh_open()
        if self._broadcast is None:
            metrics = self._sync_object_store(state, version).metrics()
            self._commit()
            return metrics
        connect_s = self._ensure_group(self._broadcast)
        try:
            stats, sent = self._broadcast.send(self._actors, state, version)
        except Exception:
            # Closing our end makes the receivers fail fast instead of blocking until the
            # group timeout; the next sync rebuilds the group (restarted actors report no
            # group id). The pool keeps serving the previous version.
            self._broadcast.close()
            raise
        self._version, self._state, self._handle = version, sent, None
        self._commit()
        return stats.metrics() | {"timing/sync_group": connect_s}

    def _sync_object_store(self, state: Mapping[str, torch.Tensor], version: int) -> SyncStats:
        t0 = time.perf_counter()
        handle = self._object_store.publish(state, version)
        self._version, self._handle, self._state = version, handle, None
        refs = [a.load_weights_handle.remote(handle) for a in self._actors]
        for k, ref in enumerate(refs):
            try:
                ray.get(ref)
            except RayActorError:
                self._wait_restarted(k)
                self._catch_up([self._actors[k]])
        return SyncStats(time.perf_counter() - t0, handle.num_bytes, len(handle.refs))

    def _ensure_group(self, transport: BroadcastTransport) -> float:
        """(Re)build the broadcast group unless every actor is in the live one.

        Returns:
            Seconds spent building (0 when the group was reused).
        """
        ids = ray.get([a.broadcast_group_id.remote() for a in self._actors])
        if transport.group_id is not None and set(ids) == {transport.group_id}:
            return 0.0
        return transport.connect(self._actors)

    def _catch_up(self, actors: list[Any]) -> None:
        """Make `actors` serve the current weights (no-op while they are the base ones).

        Always through the object store: the broadcast transport publishes its kept state
        lazily, once per version.
        """
        if self._handle is None and self._state is not None:
            self._handle = self._object_store.publish(self._state, self._version)
        if self._handle is not None:
            ray.get([a.load_weights_handle.remote(self._handle) for a in actors])

    def _wait_restarted(self, k: int) -> None:
        """Block until actor k answers again.

        Calls to a restarting actor fail with `ActorUnavailableError`, so this polls.

        An actor dead for good (out of `rollout.max_restarts`) is replaced by a new one with
        the current weights, so the run does not fail for a lost actor.

        Raises:
            ActorUnavailableError: still restarting after `_RESTART_WAIT_S`.
            PlacementTimeout: a replacement could not be placed in `resize_timeout_s`.
        """
        deadline = time.monotonic() + _RESTART_WAIT_S
        while True:
            try:
                ray.get(self._actors[k].weights_version.remote())
                self.faults["rollout_restarts"] += 1
                self._commit()
                logger.warning("rollout actor %d was restarted by Ray; catching it up", k)
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            except ActorDiedError:  # out of restarts: a new actor takes its place
                (self._actors[k],) = self._start_actors(1, timeout_s=self.cfg.resize_timeout_s)
                self.faults["rollout_replacements"] += 1
                self._commit()
                logger.warning("rollout actor %d was out of restarts; replaced by a new one", k)
                if self._broadcast is not None:
                    self._broadcast.close()  # membership changed
                return

    # ----------------------------------------------------------------------- membership

    def hand_out(self, key: str, shares: list[Any]) -> None:
        """Learner rank 0: put every other rank's share of a batch into the object store
        (`shares[r]` for rank r; `shares[0]` stays with the caller) and leave the references
        with the pool's owner, where rank r picks its own up with `take(key, r)`. No rank
        but the caller ever holds the whole batch."""
        refs = [None, *(ray.put(share) for share in shares[1:])]
        ray.get(self._owner.deposit.remote(key, refs))

    def take(self, key: str, rank: int) -> Any:
        """Learner rank `rank` (> 0): its share deposited under `key` by `hand_out`."""
        (ref,) = ray.get(self._owner.withdraw.remote(key, rank))
        return ray.get(ref)

    def resize(self, num_actors: int) -> None:
        """Grow (new actors serve the current weights before they take work) or shrink
        (the last actors' engines are shut down, then the actors are killed).

        Raises:
            PlacementTimeout: the new actors did not start within `resize_timeout_s` (the
                cluster has no room and no autoscaler added any); the pool is unchanged.
        """
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        self._refresh_open()
        size = len(self._actors)
        if num_actors > size:
            self._add_actors(num_actors - size, timeout_s=self.cfg.resize_timeout_s)
        elif num_actors < size:
            removed, self._actors = self._actors[num_actors:], self._actors[:num_actors]
            self._commit()
            self._stop(removed)
        if self._broadcast is not None:
            self._broadcast.close()  # membership changed: the next sync builds a new group

    def _actor_options(self) -> dict[str, Any]:
        cfg = self.cfg
        env = worker_env_vars() | {"OMP_NUM_THREADS": str(cfg.cpus_per_actor)}
        options: dict[str, Any] = {
            "num_cpus": cfg.cpus_per_actor,
            "num_gpus": cfg.gpus_per_actor,
            "max_restarts": cfg.max_restarts,
            "runtime_env": {"env_vars": env},
        }
        options["resources"] = custom_resource(
            ROLLOUT_RESOURCE, ROLLOUT_RESOURCE_PER_ACTOR, self._custom_resources
        )
        return options

    def _add_actors(self, count: int, timeout_s: float | None = None) -> None:
        self._actors.extend(self._start_actors(count, timeout_s))
        self._commit()

    def _start_actors(self, count: int, timeout_s: float | None = None) -> list[Any]:
        """`count` new actors serving the current weights (not yet members)."""
        new, missing = ray.get(self._owner.start.remote(count, timeout_s))
        if missing:
            raise PlacementTimeout(
                f"{missing} of {count} new rollout actor(s) did not start within "
                f"rollout.resize_timeout_s={timeout_s:g} s: the cluster has no free "
                f"{self._placement_needs()} and no autoscaler added a node"
            )
        try:
            ray.get([a.weights_version.remote() for a in new])  # raises a failed start
            self._catch_up(new)
        except Exception:
            self._stop(new)  # e.g. an unreadable model dir: leave no actors behind
            raise
        return new

    def _placement_needs(self) -> str:
        """What one actor asks the scheduler for, e.g. `CPU: 1, rollout: 0.01`."""
        opts = self._actor_options()
        needs = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts["resources"]}
        return ", ".join(f"{k}: {v:g}" for k, v in needs.items() if v)

    def _stop(self, actors: list[Any]) -> None:
        """Shut engines down (no /dev/shm leaks), then kill the actors."""
        ray.get(self._owner.stop.remote(actors))

    def shutdown(self) -> None:
        """Stop every actor the owner has, whichever copy added it (engines first), then
        the owner. The pool is unusable afterwards; a second call does nothing."""
        if self._broadcast is not None:
            self._broadcast.close()
        owner, self._owner = self._owner, None
        self._actors = []
        if owner is None:
            return
        try:
            ray.get(owner.shutdown.remote())
        except RayActorError:
            return  # shut down already (by another copy)
        ray.kill(owner)
