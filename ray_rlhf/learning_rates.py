"""Learning rates of a run: `sft.lr`, `rm.lr`, `ppo.lr` and `ppo.critic_lr`.

A value set in the config is used as is. An unset (None) value comes from the size of the
model the run starts from:

- a pretrained model (`PRETRAINED_FROM` parameters or more) gets the rates practitioners use
  for full fine-tuning of chat models (`PRETRAINED`: SFT 5e-6, RM 9e-6, policy 1e-6,
  critic 9e-6, as in OpenRLHF's defaults); a rate sized for a tiny model (1e-4 for the
  policy) moves a 135M model's replies so far in one step that its KL to the start is
  several nats per reply within a few iterations;
- a smaller model, such as the tiny models built from `model.tiny` for the toy world, gets
  `SMALL`, the rates those models were tuned with (they learn nothing in a demo's budget at
  the pretrained rates).

`ray_rlhf.loops.preflight` resolves them once per run, before Ray starts, logs the values,
and stores them in the run's `config.yaml`; a learner built without preflight (e.g. in a
notebook) resolves a None rate the same way from the model it trains (`lr_for`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ray_rlhf.config import RLHFConfig

PRETRAINED_FROM = 20_000_000
"""Parameter count from which a model gets the `PRETRAINED` rates."""

SMALL = {"sft.lr": 3e-3, "rm.lr": 1e-3, "ppo.lr": 1e-4, "ppo.critic_lr": 5e-4}
"""Rates of models below `PRETRAINED_FROM` parameters (the toy world's tiny models)."""

PRETRAINED = {"sft.lr": 5e-6, "rm.lr": 9e-6, "ppo.lr": 1e-6, "ppo.critic_lr": 9e-6}
"""Rates of models with `PRETRAINED_FROM` parameters or more."""

KEYS = tuple(SMALL)


def default_lr(key: str, num_parameters: int) -> float:
    """The rate `key` (e.g. `ppo.lr`) gets when unset, for a model of `num_parameters`."""
    table = PRETRAINED if num_parameters >= PRETRAINED_FROM else SMALL
    return table[key]


def lr_for(value: float | None, key: str, model: torch.nn.Module) -> float:
    """`value`, or `default_lr(key, ...)` for `model`'s parameter count when it is None."""
    if value is not None:
        return value
    return default_lr(key, sum(p.numel() for p in model.parameters()))


def resolve_learning_rates(
    cfg: RLHFConfig, num_parameters: int, shown: Collection[str] = KEYS
) -> tuple[RLHFConfig, str]:
    """`cfg` with every unset rate filled in, and a log line saying what was chosen and why.

    Args:
        cfg: The run's config.
        num_parameters: Parameters of the model the run starts from.
        shown: The rates the log line reports (those of the stages that run).
    """
    chosen: dict[str, float] = {}
    sections = {}
    for section in ("sft", "rm", "ppo"):
        values = {}
        for field in (f.name for f in dataclasses.fields(getattr(cfg, section))):
            key = f"{section}.{field}"
            if key in KEYS and getattr(getattr(cfg, section), field) is None:
                values[field] = chosen[key] = default_lr(key, num_parameters)
        sections[section] = dataclasses.replace(getattr(cfg, section), **values)
    resolved = dataclasses.replace(cfg, **sections)
    keys = [k for k in KEYS if k in shown]
    defaulted = [k for k in keys if k in chosen]
    given = [k for k in keys if k not in chosen]
    size = f"{num_parameters / 1e6:.1f}M"
    kind = "pretrained-model" if num_parameters >= PRETRAINED_FROM else "small-model"
    parts = [f"{k} {_value(resolved, k):g}" for k in keys]
    why = f"{', '.join(defaulted)}: the {kind} defaults for {size} parameters" if defaulted else ""
    if given:
        why += ("; " if why else "") + f"{', '.join(given)}: set in the config"
    return resolved, f"{', '.join(parts)} ({why})"


def _value(cfg: RLHFConfig, key: str) -> float:
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)
