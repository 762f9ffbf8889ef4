"""Which config keys decide a run's result, and where two configs differ in them.

An unfinished run dir resumes from its checkpoints. Resuming it under another model, data,
algorithm setting, size or seed would continue the old run's weights with the new settings
and mix the two, so `ray_rlhf.loops.common.check_resume_config` compares the run's stored
`config.yaml` with the new config over the keys that decide the result and refuses a
difference. Every key counts except the ones listed here, so a key added later counts
until someone lists it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

NOT_RESULT_KEYS = frozenset(
    {
        # Where the run writes and how a rerun treats its dir.
        "run.name",
        "run.output_dir",
        "run.overwrite",
        "run.allow_config_change",
        # Logging, evaluation and checkpoint cadence: what is recorded, not what is trained.
        "sft.log_every",
        "sft.checkpoint_every",
        "rm.log_every",
        "rm.eval_every",
        "rm.checkpoint_every",
        "ppo.eval_every",
        "ppo.eval_at_start",
        "ppo.checkpoint_every",
        # Placement, threads and fault tolerance: where and how the same work runs (the
        # rollout pool can be resized mid-run; row r is sampled with seed + r at any size).
        "model.trust_remote_code",
        "learner.cpus_per_worker",
        "learner.max_failures",
        "rollout.num_actors",
        "rollout.cpus_per_actor",
        "rollout.gpus_per_actor",
        "rollout.kv_cache_mib",
        "rollout.enforce_eager",
        "rollout.max_restarts",
        "rollout.sync_transport",
        "reward.num_actors",
        "meta.cpus_per_task",
        # Memory per forward: the loss is one token mean over the minibatch at any size.
        "ppo.micro_batch_size",
    }
)
"""Dotted keys that do not change a run's result."""

NOT_RESULT_SECTIONS = ("resources",)
"""Sections none of whose keys change a run's result (the cluster the run uses)."""

DERIVED_KEYS = frozenset(
    {
        "data.max_prompt_tokens",
        "data.max_response_tokens",
        "sft.lr",
        "rm.lr",
        "ppo.lr",
        "ppo.critic_lr",
    }
)
"""Keys that may be null (derived before Ray starts, `ray_rlhf.loops.preflight`); they are
compared only where both configs hold a value, i.e. resolved against resolved."""


class ConfigChange(NamedTuple):
    """One result key whose value differs between a stored and a new config."""

    key: str
    old: Any
    new: Any

    def describe(self) -> str:
        """`sft.steps: 100 -> 200` (values as JSON: strings quoted, None as null)."""
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested mapping, in order."""
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten(value, dotted)
        else:
            yield dotted, value


def counts_for_result(key: str) -> bool:
    """Whether a different value of `key` changes the run's result."""
    section = key.split(".", 1)[0]
    return key not in NOT_RESULT_KEYS and section not in NOT_RESULT_SECTIONS


def result_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], *, only: Collection[str] | None = None
) -> list[ConfigChange]:
    """The result keys whose values differ between two config trees (`to_dict` / YAML).

    Args:
        old: The stored config (e.g. a run dir's `config.yaml`).
        new: The config of the rerun.
        only: Compare just these dotted keys (default: every key).

    Returns:
        The differing keys in `new`'s order. Keys absent from `old` (added to the config
        since it was written) and `DERIVED_KEYS` that either side leaves null are skipped.
    """
    stored = dict(flatten(old))
    changes = []
    for key, value in flatten(new):
        if (only is not None and key not in only) or not counts_for_result(key):
            continue
        if key not in stored:
            continue
        before = stored[key]
        if key in DERIVED_KEYS and (before is None or value is None):
            continue
        if _normal(before) != _normal(value):
            changes.append(ConfigChange(key, before, value))
    return changes


def _normal(value: Any) -> Any:
    """Tuples as lists and ints as floats where YAML and dataclasses disagree."""
    if isinstance(value, tuple | list):
        return [_normal(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
