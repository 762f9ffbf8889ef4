"""Contrastive rewards in the reward actors: the baseline store and its `RewardTransform`.

docs/algorithms.md §2 (Shen et al. 2024, arXiv 2403.07708). The offline job
(`ray_rlhf.loops.baselines`, `ray-rlhf sample-baselines`) writes one row per prompt:

    prompt_id   str          stable id of the RL prompt (the key)
    prompt      str          its text (checked against the batch: a file built from other
                             prompts is an error, not a silent mismatch)
    rewards     list[float]  rewards of the baseline samples that succeeded (1..k values)
    responses   list[str]    those samples' texts
    num_failed  int          samples of the k that failed (not in `rewards`)
    baseline    float        aggregate of `rewards` under the job's config
    aggregate   str          which aggregate `baseline` is

PPO re-aggregates `rewards` with its own `contrastive.aggregate` when it loads the file, so
one baseline file serves mean, median and quantile runs.

`ContrastiveTransform` replaces each row's score by score - baseline(prompt). When an
earlier transform placed per-token rewards (segment rewards, §5), the baseline is
subtracted at the row's last response token (`algo.contrastive.subtract_at_last_token`):
the token rewards then sum to (their previous sum) - baseline and the segment shape of the
earlier tokens is kept. Diagnostics, each (N,): `reward/contrastive_raw` (score before the
subtraction), `reward/contrastive_baseline`, `reward/contrastive` (after) and
`reward/contrastive_fallback` (1.0 where the prompt had no baseline and the raw score was
kept, with `on_missing: raw`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ray_rlhf.algo.contrastive import (
    contrastive_scores,
    mean_baseline,
    median_baseline,
    quantile_baseline,
    subtract_at_last_token,
)
from ray_rlhf.config import ContrastiveConfig
from ray_rlhf.data.errors import DataValidationError
from ray_rlhf.reward.scorer import RewardContext, Rewards

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt_id", "prompt", "rewards")
"""Columns a baseline dataset must have (the job writes more, see the module docstring)."""

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def aggregator(cfg: ContrastiveConfig) -> Aggregator:
    """The (P, k) rewards + (P, k) valid mask -> (P,) baseline function `cfg` names."""
    if cfg.aggregate == "mean":
        return mean_baseline
    if cfg.aggregate == "median":
        return median_baseline
    q = cfg.quantile
    return lambda rewards, valid: quantile_baseline(rewards, valid, q)


def aggregate_name(cfg: ContrastiveConfig) -> str:
    """`mean`, `median` or `quantile(0.25)`."""
    return f"quantile({cfg.quantile})" if cfg.aggregate == "quantile" else cfg.aggregate


def padded_rewards(rows: Sequence[Sequence[float]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-prompt reward lists -> (P, k) float64 rewards (NaN padding) and valid mask."""
    rewards = torch.full((len(rows), k), math.nan, dtype=torch.float64)
    valid = torch.zeros(len(rows), k, dtype=torch.bool)
    for p, values in enumerate(rows):
        rewards[p, : len(values)] = torch.tensor(list(values), dtype=torch.float64)
        valid[p, : len(values)] = True
    return rewards, valid


@dataclass(frozen=True)
class BaselineStore:
    """Baselines of a validated baseline file, keyed by prompt id.

    Attributes:
        path: The file (named in every error).
        baselines: prompt id -> aggregate of its baseline rewards.
        prompts: prompt id -> prompt text the baselines were sampled for.
        aggregate: Which aggregate `baselines` holds (`aggregate_name`).
    """

    path: str
    baselines: dict[str, float]
    prompts: dict[str, str]
    aggregate: str

    def missing(self, prompt_ids: Sequence[str], prompts: Sequence[str]) -> list[str]:
        """Ids absent from the store; raises if an id's stored prompt text differs.

        Raises:
            DataValidationError: Naming the prompt id, both texts and the file.
        """
        absent = []
        for prompt_id, text in zip(prompt_ids, prompts, strict=True):
            stored = self.prompts.get(prompt_id)
            if stored is None:
                absent.append(prompt_id)
            elif stored != text:
                raise DataValidationError(
                    self.path,
                    f"prompt id {prompt_id!r} was sampled for "
                    f"prompt {stored!r} but this run's prompt is {text!r}; the baselines were "
                    "built from other prompts (rerun `ray-rlhf sample-baselines`)",
                )
        return absent


def load_baselines(path: str, cfg: ContrastiveConfig) -> BaselineStore:
    """Reads and validates a baseline dataset, then aggregates each prompt's rewards.

    Args:
        path: Parquet / jsonl file or directory (`data.sources.open_source`).
        cfg: Which aggregate to compute (`aggregate`, `quantile`).

    Raises:
        DataValidationError: Naming the file, row and field: missing column, empty or
            non-string prompt id / prompt, duplicate prompt id, empty reward list,
            non-numeric or non-finite reward.
    """
    from ray_rlhf.data.prompts import missing_columns_error
    from ray_rlhf.data.sources import open_source

    src = open_source(path)
    absent = [c for c in REQUIRED_COLUMNS if c not in src.dataset.column_names]
    if absent:
        raise missing_columns_error(
            src, absent, "baselines (columns " + ", ".join(REQUIRED_COLUMNS) + ")"
        )
    problems = src.collector()
    first_row: dict[str, int] = {}
    ids, texts, reward_lists = [], [], []
    for row, record in enumerate(src.dataset.select_columns(list(REQUIRED_COLUMNS))):
        prompt_id, text, values = record["prompt_id"], record["prompt"], record["rewards"]
        if not isinstance(prompt_id, str) or not prompt_id.strip():
            problems.add(row, "prompt_id", f"expected a non-empty string id, got {prompt_id!r}")
            continue
        if prompt_id in first_row:
            where = src.describe(first_row[prompt_id])
            problems.add(
                row, "prompt_id", f"duplicate prompt id {prompt_id!r}, first seen at {where}"
            )
            continue
        first_row[prompt_id] = row
        if not isinstance(text, str) or not text:
            problems.add(row, "prompt", f"expected non-empty prompt text, got {text!r}")
            continue
        error = _check_rewards(values)
        if error:
            problems.add(row, "rewards", f"prompt id {prompt_id!r}: {error}")
            continue
        ids.append(prompt_id)
        texts.append(text)
        reward_lists.append([float(v) for v in values])
    problems.raise_if_any()
    k = max(len(values) for values in reward_lists)
    rewards, valid = padded_rewards(reward_lists, k)
    baselines = aggregator(cfg)(rewards, valid).tolist()
    return BaselineStore(
        path=src.name,
        baselines=dict(zip(ids, baselines, strict=True)),
        prompts=dict(zip(ids, texts, strict=True)),
        aggregate=aggregate_name(cfg),
    )


def _check_rewards(values: object) -> str | None:
    """What is wrong with one row's reward list, or None."""
    if not isinstance(values, list) or not values:
        return f"expected a non-empty list of rewards, got {values!r}"
    for j, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"reward {j} is not a number: {v!r}"
        if not math.isfinite(v):
            return f"reward {j} is not finite ({v})"
    return None


class ContrastiveTransform:
    """`RewardTransform` "contrastive": score - offline baseline of the row's prompt id.

    Picklable (plain dicts): the driver loads and validates the file once, and every reward
    actor gets a copy. Rows map to prompts by `batch.prompt_ids[row // batch.n_samples]`.

    Args:
        store: The loaded baselines.
        on_missing: `error`: a prompt id absent from the store raises, naming the id and
            the file; `raw`: the row keeps its raw score (logged, and flagged in
            `reward/contrastive_fallback`).
    """

    name = "contrastive"

    def __init__(self, store: BaselineStore, on_missing: str = "error") -> None:
        self.store = store
        self.on_missing = on_missing

    @classmethod
    def from_config(cls, cfg: ContrastiveConfig) -> ContrastiveTransform:
        """Loads `cfg.baselines_path` (bad input fails here, before any actor starts)."""
        assert cfg.baselines_path is not None  # ContrastiveConfig checks this
        return cls(load_baselines(cfg.baselines_path, cfg), cfg.on_missing)

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        """See the class docstring; the module docstring lists the diagnostics."""
        batch, n = ctx.batch, ctx.batch.n_samples
        absent = set(self.store.missing(batch.prompt_ids, batch.prompts))
        if absent and self.on_missing == "error":
            first = min(batch.prompt_ids.index(p) for p in absent)
            raise DataValidationError(
                self.store.path,
                f"prompt id {batch.prompt_ids[first]!r} (row {ctx.row_offset + first * n}) "
                f"has no baseline ({len(absent)} such prompt(s) in the "
                "batch); sample baselines for these prompts or set contrastive.on_missing=raw",
            )
        if absent:
            logger.warning(
                "contrastive: %d prompt(s) without a baseline in %s keep their raw reward: %s",
                len(absent),
                self.store.path,
                sorted(absent)[:5],
            )
        base = torch.tensor(
            [self.store.baselines.get(p, 0.0) for p in batch.prompt_ids], dtype=torch.float64
        )  # (P,)
        scores = contrastive_scores(rewards.scores.double(), base, n).float()  # (N,)
        row_base = base.repeat_interleave(n).float()  # (N,)
        token_rewards = rewards.token_rewards
        if token_rewards is not None:
            token_rewards = subtract_at_last_token(token_rewards, row_base, batch.response_mask)
        fallback = torch.tensor([p in absent for p in batch.prompt_ids]).repeat_interleave(n)
        diagnostics = rewards.diagnostics | {
            "reward/contrastive_raw": rewards.scores.float(),
            "reward/contrastive_baseline": row_base,
            "reward/contrastive": scores,
            "reward/contrastive_fallback": fallback.float(),
        }
        return Rewards(scores, token_rewards, diagnostics)


def check_coverage(
    store: BaselineStore,
    on_missing: str,
    prompt_sets: Sequence[tuple[Sequence[str], Sequence[str]]],
) -> list[str]:
    """Before PPO starts: every (ids, texts) prompt set must have baselines.

    Returns:
        The missing ids (empty unless `on_missing` is `raw`, when they are logged).

    Raises:
        DataValidationError: Naming the first missing ids and the file (`on_missing:
            error`), or a prompt whose stored text differs.
    """
    absent = [p for ids, texts in prompt_sets for p in store.missing(ids, texts)]
    if absent and on_missing == "error":
        raise DataValidationError(
            store.path,
            f"{len(absent)} prompt(s) have no baseline, e.g. prompt id "
            f"{absent[0]!r}; run `ray-rlhf sample-baselines` with this run's prompts "
            "(contrastive.include_eval_prompts=true covers the eval prompts) or set "
            "contrastive.on_missing=raw",
        )
    if absent:
        logger.warning(
            "contrastive: %d prompt(s) have no baseline in %s and will keep raw rewards: %s",
            len(absent),
            store.path,
            absent[:5],
        )
    return absent
