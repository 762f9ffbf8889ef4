"""Segment reward models: segmenting RM pairs and fitting the location-aware normalizer.

Yin et al. 2025, arXiv 2501.02790 (docs/algorithms.md §5). After a per-position RM
is trained, a sample of responses (pref-train chosen and rejected rows) is scored; every
segment reward is recorded with its normalized position p = k / K; μ(p) and σ(p) are fitted
as a·log p + b by Huber regression; the four numbers, the threshold c, the reference dir
and its tokenizer fingerprint go into the RM's `ray_rlhf.json` under "segment" (atomically).
`train-rm` does this at the end of every per-position run; `ray-rlhf fit-segment-normalizer`
refits an existing RM.
"""

from __future__ import annotations

import dataclasses
import logging
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

logger = logging.getLogger(__name__)


def segment_pairs(
    cfg: RLHFConfig, reference_dir: Path, pairs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`pairs` plus chosen_/rejected_segment_ends (P, T), segmented by the reference model
    at the threshold `cfg.segment` implies (`segmentation_threshold`)."""
    threshold = segmentation_threshold(cfg)
    logger.info("segment: segmenting pairs with %s at c=%s", reference_dir, threshold)
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
    stats: dict[str, Any] = {
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
        "normalizer_source": cfg.segment.normalizer_source,
        "fit": stats,
    }
    save_json_atomic(path, meta | {METADATA_KEY: record})
    return record


def policy_sample_rows(
    cfg: RLHFConfig, reference_dir: Path, prompts: list[str]
) -> dict[str, torch.Tensor]:
    """`segment.normalizer_samples` responses of the reference policy, one per prompt
    (cycling through `prompts`), sampled with vLLM in this process at
    `rollout.temperature` and segmented by the same reference.

    Returns:
        input_ids, attention_mask, response_mask, segment_ends, each (n, T).
    """
    from ray_rlhf.algo.segments import segment_ends
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.reward.segments import load_reference, token_entropies
    from ray_rlhf.rollout.engine import create_engine, generate, shutdown_engine

    n = cfg.segment.normalizer_samples
    tokenizer = load_tokenizer(reference_dir, trust_remote_code=cfg.model.trust_remote_code)
    prompt_ids = [tokenizer(prompts[i % len(prompts)])["input_ids"] for i in range(n)]
    llm = create_engine(
        reference_dir,
        dtype=cfg.model.dtype,
        seed=cfg.run.seed,
        kv_cache_mib=cfg.rollout.kv_cache_mib,
        enforce_eager=cfg.rollout.enforce_eager,
        max_model_len=cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 2,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    try:
        outputs = generate(
            llm,
            prompt_ids,
            n=1,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            max_tokens=cfg.data.max_response_tokens,
            seed=cfg.run.seed,
        )
    finally:
        shutdown_engine(llm)
    examples, finished = [], []
    for ids, (completion,) in zip(prompt_ids, outputs, strict=True):
        full = list(ids) + list(completion.token_ids)
        mask = [False] * len(ids) + [True] * len(completion.token_ids)
        examples.append((full, mask))
        finished.append(completion.finished)
    rows = pad_rows(examples, tokenizer.pad_token_id or tokenizer.eos_token_id)
    model = load_reference(reference_dir, cfg.model.trust_remote_code)
    entropy = token_entropies(model, rows["input_ids"], rows["attention_mask"])
    rows["segment_ends"] = segment_ends(
        entropy, rows["response_mask"], torch.tensor(finished), segmentation_threshold(cfg)
    )
    return rows


def rl_prompt_texts(cfg: RLHFConfig, run_dir: Path, reference_dir: Path) -> list[str]:
    """The RL prompts (`data.prompts_path`, else the toy world's train prompts), validated."""
    from ray_rlhf.data.prompts import load_prompts
    from ray_rlhf.loops.common import toyworld_files
    from ray_rlhf.models.builders import load_tokenizer

    source = cfg.data.prompts_path or str(toyworld_files(cfg, run_dir)["train_prompts"])
    tokenizer = load_tokenizer(reference_dir, trust_remote_code=cfg.model.trust_remote_code)
    return list(
        load_prompts(
            source,
            tokenizer=tokenizer,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            chat_template=cfg.data.chat_template,
        )["prompt"]
    )


def pad_rows(examples: list[tuple[list[int], list[bool]]], pad_id: int) -> dict:
    """Right-pad (token ids, response mask) rows: input_ids (N, T) long, attention_mask and
    response_mask (N, T) bool."""
    width = max(len(ids) for ids, _ in examples)
    out = {
        "input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.bool),
        "response_mask": torch.zeros((len(examples), width), dtype=torch.bool),
    }
    for i, (ids, mask) in enumerate(examples):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = True
        out["response_mask"][i, : len(ids)] = torch.tensor(mask)
    return out


def fit_and_store(
    cfg: RLHFConfig,
    rm_dir: Path,
    reference_dir: Path,
    pairs: dict[str, torch.Tensor],
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Sample, score, fit and store (pairs must carry segment ends). Returns the record.

    With `segment.normalizer_source: policy` the responses are the reference policy's
    samples on `prompts` (the RL prompts) instead of the pairs' responses.
    """
    if cfg.segment.normalizer_source == "policy":
        if not prompts:
            raise ValueError("segment.normalizer_source=policy needs the RL prompts")
        rows = policy_sample_rows(cfg, reference_dir, prompts)
    else:
        rows = sample_rows(pairs, cfg.segment.normalizer_samples, cfg.run.seed)
    normalizer, stats = fit_normalizer(rm_dir, rows, cfg.segment.huber_epsilon)
    record = write_segment_record(rm_dir, cfg, reference_dir, normalizer, stats)
    n = normalizer
    logger.info(
        "segment: normalizer of %s: mu(p) = %.3f log p + %.3f, sigma(p) = %.3f log p + %.3f "
        "(%.0f segments of %.0f %s responses)",
        rm_dir.name,
        n.mu_slope,
        n.mu_intercept,
        n.sigma_slope,
        n.sigma_intercept,
        stats["segments"],
        stats["responses"],
        cfg.segment.normalizer_source,
    )
    return record


def per_position_rm_and_reference(cfg: RLHFConfig) -> tuple[Path, Path]:
    """(`reward.model_path`, the reference model it was trained from), both checked.

    Raises:
        ConfigError: Naming `reward.model_path`: unset, not a reward model saved by
            `ray-rlhf train-rm` with `rm.head=per_position`, or its reference model (the
            policy it was trained from, recorded in its `ray_rlhf.json`) is gone.
    """
    from ray_rlhf.models.builders import check_reward_model_dir
    from ray_rlhf.models.checkpoint import (
        METADATA_FILE,
        ModelDirError,
        load_json,
        validate_model_dir,
    )

    key = "reward.model_path"
    if cfg.reward.model_path is None:
        raise ConfigError(f"{key}: fit-segment-normalizer needs a per_position RM dir")
    trust = cfg.model.trust_remote_code
    try:
        rm_dir = check_reward_model_dir(
            cfg.reward.model_path, head="per_position", trust_remote_code=trust
        )
    except ModelDirError as err:
        raise ConfigError(
            f"{key}: {err}; give a `ray-rlhf train-rm rm.head=per_position` output"
        ) from err
    meta_file = rm_dir / METADATA_FILE
    base = load_json(meta_file).get("base_model") if meta_file.is_file() else None
    if base is None:
        raise ConfigError(
            f"{key}: {rm_dir} has no {METADATA_FILE} naming the model it was "
            "trained from (its reference model); give a `ray-rlhf train-rm` "
            "output"
        )
    try:
        reference = validate_model_dir(base)
    except ModelDirError as err:
        raise ConfigError(
            f"{key}: the reference model {base} that {rm_dir} was trained from is unusable: {err}"
        ) from err
    return rm_dir, reference


def run_job(cfg: RLHFConfig) -> dict[str, Any]:
    """`ray-rlhf fit-segment-normalizer reward.model_path=RM [segment.* ...]`: refit the
    normalizer of an existing per-position RM on the config's preference pairs."""
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    rm_dir, reference = per_position_rm_and_reference(cfg)
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("rm",), base_dir=reference)
    return refit(cfg, rm_dir, reference, run_dir)


def refit(cfg: RLHFConfig, rm_dir: Path, reference: Path, run_dir: Path) -> dict[str, Any]:
    """Fit and store `rm_dir`'s normalizer from `cfg.segment`: on the reference policy's
    samples of the RL prompts, or on the (segmented) preference pairs, whichever
    `segment.normalizer_source` names; only that source is loaded."""
    from ray_rlhf.loops.rm import load_rm_tensors

    if cfg.segment.normalizer_source == "policy":
        return fit_and_store(cfg, rm_dir, reference, {}, rl_prompt_texts(cfg, run_dir, reference))
    per_position = dataclasses.replace(cfg, rm=dataclasses.replace(cfg.rm, head="per_position"))
    train, _ = load_rm_tensors(per_position, run_dir, reference)  # segmented (see loops.rm)
    return fit_and_store(cfg, rm_dir, reference, train)
