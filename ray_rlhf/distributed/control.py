"""The run's control file (`<run dir>/control.yaml`), read by learner rank 0 between PPO
iterations: `rollout_actors: N` resizes the rollout pool. Fault-test hooks:
`kill_learner_at_iteration: k` makes a learner process SIGKILL itself once, and
`kill_actors_at_iteration: {k: ActorClassName}` makes rank 0 SIGKILL that class's actors
before iteration k."""

from __future__ import annotations

import logging
from pathlib import Path

import ray
import ray.train

from ray_rlhf.chaos import kill_actors_if_asked, kill_self_if_asked
from ray_rlhf.errors import PlacementTimeout
from ray_rlhf.progress import NOTICE_KEY

logger = logging.getLogger(__name__)


def apply_control(pools: dict, control_path: Path) -> dict[str, float]:
    """Rank 0, between iterations: resize the rollout pool if `control.yaml` in the run dir
    asks for another size (`rollout_actors: N`). New actors get the current weights first."""
    pool = pools["rollout"]
    if control_path.is_file():
        import yaml

        try:
            wanted = (yaml.safe_load(control_path.read_text()) or {}).get("rollout_actors")
        except (yaml.YAMLError, AttributeError) as exc:
            logger.warning("ppo: ignoring unreadable %s: %s", control_path, exc)
            wanted = None
        if wanted == _UNPLACED.get(control_path):
            pass  # tried and could not be placed; waits for another value
        elif isinstance(wanted, int) and wanted >= 1 and wanted != pool.size:
            logger.info("ppo: resizing rollout pool %d -> %d", pool.size, wanted)
            try:
                pool.resize(wanted)
            except PlacementTimeout as exc:
                _UNPLACED[control_path] = wanted
                notice = f"rollout pool stays at {pool.size} actor(s): {exc}"
                logger.warning("ppo: %s", notice)
                return {
                    "rollout/actors": float(pool.size),
                    "faults/resize_unplaced": 1.0,
                    NOTICE_KEY: notice,
                }
        elif wanted is not None and not (isinstance(wanted, int) and wanted >= 1):
            logger.warning("ppo: %s: rollout_actors must be an int >= 1", control_path)
    return {"rollout/actors": float(pool.size)}


_UNPLACED: dict[Path, int] = {}
"""Per control file, the pool size a resize could not place (not retried until it changes).
Lives in rank 0's process; a restarted worker group tries once more."""


def chaos_in_flight(control_path: Path, it: int) -> None:
    """Rank 0, right after submitting iteration `it + 1`'s generation:
    `kill_actors_in_flight_at_iteration: {k: RolloutActor}` SIGKILLs that class's actors
    once each is 50 ms of CPU into the generation, so the pool meets a task that dies in
    flight (fault tests)."""
    kill_actors_if_asked(control_path, "kill_actors_in_flight_at_iteration", it + 1,
                         busy_cpu_s=0.05)  # fmt: skip


def chaos_hooks(control_path: Path, it: int, rank: int) -> None:
    """Fault-test hooks (`ray_rlhf.chaos`) at the start of iteration `it + 1`:
    `kill_learner_at_iteration: k` makes the last rank SIGKILL its own process once, so Ray
    Train restarts the worker group from the last checkpoint; `kill_actors_at_iteration:
    {k: ActorClassName}` makes rank 0 SIGKILL that class's actors (rollout or reward) once."""
    if rank == 0:
        kill_actors_if_asked(control_path, "kill_actors_at_iteration", it + 1)
    if rank == ray.train.get_context().get_world_size() - 1:
        kill_self_if_asked(control_path, "kill_learner_at_iteration", it + 1)
