"""Shared by test_cluster_yaml.py and test_kuberay_manifest.py: cluster.yaml, the pool
resources its node types declare, and helpers that damage one key of a loaded copy (the
`broken` cases of both test modules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"

# Custom resources that the pools / Ray Train workers request (docs/cluster.md).
POOL_RESOURCES = ("rollout", "learner")

Mutation = Callable[[Any], None]


def load_cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _parent(config: Any, path: str) -> tuple[Any, str | int]:
    """The container holding the last key of a dotted path (digits index lists)."""
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, int(last) if isinstance(node, list) else last


def set_at(path: str, value: Any) -> Mutation:
    """A mutation setting the dotted `path` (e.g. `spec.groups.0.name`) to `value`."""

    def mutate(config: Any) -> None:
        node, key = _parent(config, path)
        node[key] = value

    return mutate


def drop_at(path: str) -> Mutation:
    """A mutation deleting the dotted `path`."""

    def mutate(config: Any) -> None:
        node, key = _parent(config, path)
        del node[key]

    return mutate
