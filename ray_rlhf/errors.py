"""Errors the user can fix: a config value, a data file, a model dir, a reward rule, a run dir.

They share the base class `UserError`. The CLI reports one as a single paragraph (what is
wrong and where, then how to fix it) with exit code 2 and writes its traceback to the run's
log (`ray_rlhf.logs`). Raised inside a Ray Train learner, one fails the run at once instead
of being retried (`ray_rlhf.distributed.trainer`): it would fail the same way again.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message says what is wrong and where.

    Attributes:
        kind: Short label the CLI prints before the message, e.g. "data error".
        hint: How to fix it, printed after the message; an instance may set its own.
        details: More for the log file than the console (e.g. a Ray Train worker's
            traceback); empty by default.
    """

    kind: str = "error"
    hint: str = ""
    details: str = ""


class RewardError(UserError, ValueError):
    """A reward rule cannot be loaded, raised, or returned a non-number / the wrong count; or
    a reward (rule or reward model) is not finite. Deterministic: the same batch fails again."""

    kind = "reward error"
    hint = (
        "reward.rule names 'package.module:function' or 'path/to/file.py:function'; it is "
        "called as f(prompt, response) (with two lists when f.batched = True; plus "
        "rendered_prompt= if it takes that keyword) and must return a finite number for every "
        "response (examples/custom_reward/)."
    )


class CheckpointError(UserError):
    """A run dir's checkpoint does not fit the model or config of this run."""

    kind = "checkpoint error"
    hint = (
        "The run dir holds a checkpoint of another model or config; pick another run.name (or "
        "delete the run dir) to start over."
    )


class PlacementTimeout(UserError, RuntimeError):
    """New pool actors (rollout or reward: a resize, or the replacement of an actor out of
    restarts) were not placed and started in time; the pool kept its size. A retry of the
    learners would wait for the same free room, so it is not retried."""

    kind = "cluster capacity"
    hint = (
        "The cluster has no free CPUs / GPUs for the new actor. On the embedded cluster raise "
        "resources.num_cpus (it is sized at start); on a cluster, let the autoscaler add a "
        "node type that fits, or raise the timeout named above if actors start slowly."
    )
