"""Segment reward models: segmenting RM pairs and fitting the location-aware normalizer.

Yin et al. 2025, arXiv 2501.02790 (ALGORITHMS.md section 5). After a per-position RM
is trained, a sample of responses (pref-train chosen and rejected rows) is scored; every
segment reward is recorded with its normalized position p = k / K; μ(p) and σ(p) are fitted
as a·log p + b by Huber regression; the four numbers, the threshold c, the reference dir
and its tokenizer fingerprint go into the RM's `ray_rlhf.json` under "segment" (atomically).
`train-rm` does this at the end of every per-position run; `ray-rlhf fit-segment-normalizer`
refits an existing RM.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.algo.segments import LocationNormalizer, fit_location_normalizer, segment_positions
from ray_rlhf.config import ConfigError, RLHFConfig
from ray_rlhf.reward.segments import (
    METADATA_KEY,
    add_pair_segment_ends,
    segmentation_threshold,
    tokenizer_fingerprint,
)


def segment_pairs(
    cfg: RLHFConfig, reference_dir: Path, pairs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`pairs` plus chosen_/rejected_segment_ends (P, T), segmented by the reference model
    at the threshold `cfg.segment` implies (`segmentation_threshold`)."""
    threshold = segmentation_threshold(cfg)
    print(f"[segment] segmenting pairs with {reference_dir} at c={threshold}", flush=True)
    return add_pair_segment_ends(
        pairs, reference_dir, threshold, trust_remote_code=cfg.model.trust_remote_code
    )


def sample_rows(pairs: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, torch.Tensor]:
    """A seeded sample of n rows of [chosen; rejected] (input_ids, attention_mask,
    response_mask, segment_ends), each (n, T)."""
    keys = ("input_ids", "attention_mask", "response_mask", "segment_ends")
    rows = {k: torch.cat([pairs[f"chosen_{k}"], pairs[f"rejected_{k}"]]) for k in keys}
    total = rows["input_ids"].shape[0]
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(n, total)]
    return {k: v[pick] for k, v in rows.items()}


@torch.no_grad()
def rm_values(rm_dir: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) float32 per-position values of a per-position reward model."""
    from ray_rlhf.models.builders import load_reward_model, score_positions

    model = load_reward_model(rm_dir, head="per_position").eval()
    chunks = [
        score_positions(model, input_ids[lo : lo + 64], attention_mask[lo : lo + 64].long())
        for lo in range(0, input_ids.shape[0], 64)
    ]
    return torch.cat(chunks).float()


def fit_normalizer(
    rm_dir: Path, rows: dict[str, torch.Tensor], epsilon: float
) -> tuple[LocationNormalizer, dict[str, float]]:
    """Scores `rows` (`sample_rows`) with the RM and fits μ(p), σ(p) to its segment rewards.

    Returns:
        The normalizer and stats: `segments`, `responses`, `reward_mean`, `reward_std`.
    """
    values = rm_values(rm_dir, rows["input_ids"], rows["attention_mask"])  # (M, T)
    ends = rows["segment_ends"]
    rewards, positions = values[ends], segment_positions(ends)[ends]  # (S,) each
    normalizer = fit_location_normalizer(rewards, positions, epsilon)
    stats = {
        "segments": float(rewards.numel()),
        "responses": float(ends.shape[0]),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
    }
    return normalizer, stats


def write_segment_record(
    rm_dir: Path,
    cfg: RLHFConfig,
    reference_dir: Path,
    normalizer: LocationNormalizer,
    stats: dict[str, float],
) -> dict[str, Any]:
    """Writes the "segment" record into the RM's `ray_rlhf.json` (atomic replace).

    Raises:
        ValueError: If the RM already records another threshold c (its segmentation at
            training time must be the one the normalizer and PPO use).
    """
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.models.checkpoint import METADATA_FILE, load_json, save_json_atomic

    path = rm_dir / METADATA_FILE
    meta = load_json(path)
    threshold = segmentation_threshold(cfg)
    old = meta.get(METADATA_KEY)
    if old is not None and old["threshold"] != threshold:
        raise ConfigError(
            f"segment.threshold: reward model {rm_dir} was trained with segments at "
            f"c={old['threshold']}; the "
            f"config gives c={threshold} (segment.reward_granularity / segment.threshold)"
        )
    tokenizer = load_tokenizer(reference_dir, trust_remote_code=cfg.model.trust_remote_code)
    record = {
        "threshold": threshold,
        "granularity": cfg.segment.reward_granularity,
        "reference_dir": str(Path(reference_dir).resolve()),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "normalizer": normalizer._asdict(),
        "huber_epsilon": cfg.segment.huber_epsilon,
        "fit": stats,
    }
    save_json_atomic(path, meta | {METADATA_KEY: record})
    return record


def fit_and_store(
    cfg: RLHFConfig, rm_dir: Path, reference_dir: Path, pairs: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Sample, score, fit and store (pairs must carry segment ends). Returns the record."""
    rows = sample_rows(pairs, cfg.segment.normalizer_samples, cfg.run.seed)
    normalizer, stats = fit_normalizer(rm_dir, rows, cfg.segment.huber_epsilon)
    record = write_segment_record(rm_dir, cfg, reference_dir, normalizer, stats)
    n = normalizer
    print(
        f"[segment] normalizer of {rm_dir.name}: mu(p) = {n.mu_slope:.3f} log p + "
        f"{n.mu_intercept:.3f}, sigma(p) = {n.sigma_slope:.3f} log p + {n.sigma_intercept:.3f} "
        f"({stats['segments']:.0f} segments of {stats['responses']:.0f} responses)",
        flush=True,
    )
    return record


def run_job(cfg: RLHFConfig) -> dict[str, Any]:
    """`ray-rlhf fit-segment-normalizer reward.model_path=RM [segment.* ...]`: refit the
    normalizer of an existing per-position RM on the config's preference pairs."""
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight
    from ray_rlhf.loops.rm import load_rm_tensors
    from ray_rlhf.models.checkpoint import METADATA_FILE, load_json

    if cfg.reward.model_path is None:
        raise ConfigError("reward.model_path: fit-segment-normalizer needs a per_position RM dir")
    rm_dir = Path(cfg.reward.model_path).resolve()
    meta = load_json(rm_dir / METADATA_FILE)
    if meta.get("head") != "per_position":
        raise ConfigError(
            f"reward.model_path: {rm_dir} has head {meta.get('head')!r}, not per_position"
        )
    reference = Path(meta["base_model"])
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("rm",), base_dir=reference)
    per_position = dataclasses.replace(cfg, rm=dataclasses.replace(cfg.rm, head="per_position"))
    train, _ = load_rm_tensors(per_position, run_dir, reference)  # segmented (see loops.rm)
    return fit_and_store(cfg, rm_dir, reference, train)
