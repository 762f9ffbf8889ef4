"""The rollout pool's actors: `RolloutActor` (a `RolloutWorker` plus the receiving ends of
both weight transports) and `RolloutPoolOwner` (creates and stops them and keeps the pool's
membership, weights version and fault counts for every copy of `RolloutPool`)."""

from __future__ import annotations

import warnings
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from ray_rlhf.config import RolloutConfig
from ray_rlhf.distributed.weight_sync import (
    BroadcastReceiver,
    Bucket,
    GroupSpec,
    ObjectStoreTransport,
    WeightsHandle,
)
from ray_rlhf.rollout.worker import RolloutWorker
from ray_rlhf.types import RolloutBatch


class RolloutActor:
    """Actor body: a `RolloutWorker` and the receiving ends of both weight transports."""

    def __init__(self, model_dir: str, cfg: RolloutConfig, **worker_kwargs: Any) -> None:
        self.worker = RolloutWorker(model_dir, cfg, **worker_kwargs)
        self.receiver = BroadcastReceiver()

    def generate(self, prompt_ids: list[str], prompts: list[str], **kwargs: Any) -> RolloutBatch:
        """`RolloutWorker.generate`."""
        return self.worker.generate(prompt_ids, prompts, **kwargs)

    def weights_version(self) -> int:
        """Version of the weights served."""
        return self.worker.version

    def pad_token_id(self) -> int:
        """Pad id of the rows this actor returns."""
        return self.worker.pad_token_id

    def load_weights_handle(self, handle: WeightsHandle) -> None:
        """Fetch weights published by `ObjectStoreTransport` and serve them."""
        self.worker.load_weights(ObjectStoreTransport.fetch(handle), handle.version)

    def join_broadcast_group(self, spec: GroupSpec, rank: int) -> None:
        """Join a (new) broadcast group as `rank`."""
        self.receiver.join(spec, rank)

    def broadcast_group_id(self) -> str | None:
        """Id of the broadcast group joined (None after a restart)."""
        return self.receiver.group_id

    def receive_broadcast(self, buckets: list[Bucket], version: int) -> None:
        """Take part in one broadcast sync and serve the received weights."""
        self.worker.load_weights(self.receiver.receive(buckets), version)

    def shutdown(self) -> None:
        """Leave the group and stop the engine (before the actor is killed)."""
        self.receiver.close()
        self.worker.shutdown()


class RolloutPoolOwner:
    """Actor body owning a pool's rollout actors: creates and stops them and keeps the
    membership, weights version and fault counts that every copy of the pool reads."""

    def __init__(self, actor_args: tuple, actor_kwargs: dict, options: dict) -> None:
        self._remote_cls = ray.remote(RolloutActor).options(**options)
        self._args, self._kwargs = actor_args, actor_kwargs
        self._members: list[Any] = []
        self._version = 0
        self._faults: dict[str, int] = {}
        self._shards: dict[str, dict[int, Any]] = {}

    def start(self, count: int, timeout_s: float | None) -> tuple[list[Any], int]:
        """Create `count` actors (owned here) and wait up to `timeout_s` for them to be
        placed and started. Returns (the actors, how many did not start in time); when any
        did not, none are returned (all are stopped)."""
        new = [self._remote_cls.remote(*self._args, **self._kwargs) for _ in range(count)]
        refs = [a.weights_version.remote() for a in new]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) == len(refs):
            return new, 0
        _stop_actors([a for a, r in zip(new, refs, strict=True) if r in ready])
        for actor in new:  # not placed (or still starting): cancel without waiting
            ray.kill(actor, no_restart=True)
        return [], len(refs) - len(ready)

    def stop(self, actors: list[Any]) -> None:
        """Shut the actors' engines down and kill them."""
        _stop_actors(actors)

    def commit(self, members: list[Any], version: int, faults: dict[str, int]) -> None:
        """Record the pool's current state (after any change by any copy)."""
        self._members, self._version, self._faults = list(members), version, dict(faults)

    def state(self) -> tuple[list[Any], int, dict[str, int]]:
        """(members, weights version, fault counts) as last committed."""
        return self._members, self._version, self._faults

    def deposit(self, key: str, refs: list[Any]) -> None:
        """Hold `refs[r]`, learner rank r's share of a batch in the object store, until rank
        r withdraws it. A new key drops the shares of older ones (a restarted worker group
        never withdraws them). The refs arrive nested in a list, so Ray passes them as
        references (in band: the object store counts this actor as a holder)."""
        self._shards = {key: dict(enumerate(refs))}

    def withdraw(self, key: str, rank: int) -> list[Any]:
        """`[ref]` of rank `rank`'s share under `key` (nested: the caller gets the reference,
        not the value), forgotten here once taken.

        Raises:
            KeyError: no share of `rank` under `key` (not deposited, or taken already).
        """
        return [self._shards[key].pop(rank)]

    def shutdown(self) -> None:
        """Stop every member."""
        members, self._members = self._members, []
        _stop_actors(members)


def _stop_actors(actors: list[Any]) -> None:
    """Shut engines down (no /dev/shm leaks), then kill the actors."""
    for actor, ref in [(a, a.shutdown.remote()) for a in actors]:
        try:
            ray.get(ref)
        except RayActorError:
            pass  # already dead: nothing left to shut down
        except RayError as exc:  # still kill it; /dev/shm may need cleaning
            warnings.warn(f"rollout engine shutdown failed: {exc}", stacklevel=2)
        ray.kill(actor, no_restart=True)
