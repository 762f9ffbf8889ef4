"""Reward-model driver: config -> preference pairs -> Ray Train (DeepSpeed) -> HF RM dir."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.config import ConfigError, RLHFConfig, requested_cpus
from ray_rlhf.loops.common import prepare_base_model, toyworld_files

logger = logging.getLogger(__name__)

STRENGTH_COLUMN = "strength"
"""Per-pair preference strength mu, written by `ray-rlhf preference-strength`."""

EVAL_FRACTION = 0.1
"""Share of `data.preferences_path` pairs held out for `eval/accuracy` (seeded)."""


@dataclass(frozen=True)
class RMResult:
    """Where the trained reward model is, its held-out accuracy, and how long it took."""

    reward_model_dir: Path
    base_dir: Path
    eval_accuracy: float
    seconds: float


def tokenize_pairs(
    dataset: Any, tokenizer: Any, max_length: int, margin_key: str = "margin"
) -> dict[str, torch.Tensor]:
    """Encode (prompt, chosen + EOS) and (prompt, rejected + EOS), padded to one width.

    Args:
        dataset: Rows with `prompt`, `chosen`, `rejected` (as `load_preferences` returns).

    Returns:
        chosen_/rejected_ input_ids (P, T) long, attention_mask (P, T) bool and
        response_mask (P, T) bool; margin (P,) float32 when the dataset has `margin_key`.
    """
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch

    prompts = dataset["prompt"]
    sides = {}
    for side in ("chosen", "rejected"):
        sides[side] = [
            encode_prompt_response(tokenizer, p, r, max_length=max_length)
            for p, r in zip(prompts, dataset[side], strict=True)
        ]
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    padded = pad_batch(sides["chosen"] + sides["rejected"], pad_id)  # (2P, T)
    p = len(prompts)
    out = {
        f"{side}_{k}": v[i * p : (i + 1) * p]
        for k, v in padded.items()
        for i, side in enumerate(("chosen", "rejected"))
    }
    for key, name in ((margin_key, "margin"), (STRENGTH_COLUMN, "strength")):
        if key in dataset.column_names:
            out[name] = torch.tensor(dataset[key], dtype=torch.float32)
    return out


def tokenize_meta_responses(
    dataset: Any, tokenizer: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """Encode (prompt, response + EOS) for each of every row's k responses, padded to one width.

    Args:
        dataset: Rows with `prompt` and `responses` (k texts each, as `load_meta_responses`
            returns).

    Returns:
        input_ids (M k, T) long, attention_mask and response_mask (M k, T) bool, prompt-major:
        rows m k .. m k + k - 1 are the responses of prompt m.
    """
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch

    examples = [
        encode_prompt_response(tokenizer, prompt, response, max_length=max_length)
        for prompt, responses in zip(dataset["prompt"], dataset["responses"], strict=True)
        for response in responses
    ]
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    return pad_batch(examples, pad_id)


def load_meta_tensors(cfg: RLHFConfig, base_dir: Path) -> dict[str, torch.Tensor] | None:
    """Validate (`load_meta_responses`, errors name file and row) and tokenize MetaRM's meta
    responses, the first `rm.meta.k` of each row; None unless `rm.meta.enabled`."""
    if not cfg.rm.meta.enabled:
        return None
    from ray_rlhf.data.meta_responses import load_meta_responses
    from ray_rlhf.models.builders import load_tokenizer

    if cfg.data.meta_responses_path is None:  # RLHFConfig checks this, except under iterate
        raise ConfigError(
            "data.meta_responses_path: required when rm.meta.enabled is true (prompts with k "
            "policy samples each)"
        )
    tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    data = load_meta_responses(
        cfg.data.meta_responses_path,
        k=cfg.rm.meta.k,
        tokenizer=tokenizer,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        max_response_tokens=cfg.data.max_response_tokens,
    )
    max_length = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 2
    return tokenize_meta_responses(data, tokenizer, max_length)


def check_pair_columns(dataset: Any, cfg: RLHFConfig, source: str) -> None:
    """The per-pair columns `cfg.rm` reads exist and are finite, before any training.

    Raises:
        DataValidationError: Naming `source`, the column and the first bad row.
    """
    from ray_rlhf.data.errors import DataValidationError

    needed = []
    if cfg.rm.uses_strength:
        needed.append((STRENGTH_COLUMN, f"rm.loss={cfg.rm.loss!r}"))
    if cfg.rm.margin:
        needed.append(("margin", "rm.margin=true"))
    for column, why in needed:
        if column not in dataset.column_names:
            hint = " (write it with `ray-rlhf preference-strength`)" * (column == STRENGTH_COLUMN)
            raise DataValidationError(source, f"{why} needs a {column!r} column{hint}")
        values = torch.tensor(dataset[column], dtype=torch.float64)
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise DataValidationError(
                source,
                f"id {dataset['id'][row]!r}: {values[row].item()}, not a finite number",
                row=row,
                field=column,
            )


def check_held_out_pairs(n_eval: int, cfg: RLHFConfig, source: str) -> None:
    """Every learner rank needs held-out pairs to evaluate.

    Raises:
        DataValidationError: Fewer held-out pairs than `learner.num_workers`.
    """
    from ray_rlhf.data.errors import DataValidationError

    workers = cfg.learner.num_workers
    if n_eval < workers:
        raise DataValidationError(
            source,
            f"{n_eval} held-out preference pair(s), fewer than learner.num_workers={workers} "
            "(every rank evaluates some); add pairs or lower learner.num_workers",
        )


def pair_sources(cfg: RLHFConfig, run_dir: Path) -> tuple[str, str | None]:
    """(train file, held-out file) of RM training: `data.preferences_path` (else the toy
    world's pref_train) and `data.eval_preferences_path` (else, for the toy world, its
    pref_test). A None held-out file: `EVAL_FRACTION` of the train file is held out."""
    if cfg.data.preferences_path is None:
        files = toyworld_files(cfg, run_dir)
        eval_source = cfg.data.eval_preferences_path or str(files["pref_test"])
        return str(files["pref_train"]), eval_source
    return cfg.data.preferences_path, cfg.data.eval_preferences_path


def load_pair_splits(cfg: RLHFConfig, run_dir: Path, tokenizer: Any) -> tuple[Any, Any, str]:
    """Validated (train, held-out) preference pairs and the train source's name (see
    `pair_sources`; a held-out share is split off by `held_out_split`, seeded). Errors name
    file, row and field."""
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.data.sampler import held_out_split

    def load(source: str) -> Any:
        return load_preferences(
            source,
            tokenizer=tokenizer,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            max_response_tokens=cfg.data.max_response_tokens,
            chat_template=cfg.data.chat_template,
        )

    source, eval_source = pair_sources(cfg, run_dir)
    if eval_source is not None:
        return load(source), load(eval_source), source
    train, held_out = held_out_split(load(source), EVAL_FRACTION, cfg.run.seed)
    return train, held_out, source


def load_rm_tensors(
    cfg: RLHFConfig, run_dir: Path, base_dir: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Validate and tokenize the train and held-out pairs (`load_pair_splits`)."""
    from ray_rlhf.data.limits import max_sequence_tokens
    from ray_rlhf.models.builders import load_tokenizer

    tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    train, held_out, source = load_pair_splits(cfg, run_dir, tokenizer)
    check_pair_columns(train, cfg, source)
    max_length = max_sequence_tokens(cfg.data)
    pairs = (
        tokenize_pairs(train, tokenizer, max_length),
        tokenize_pairs(held_out, tokenizer, max_length),
    )
    if cfg.rm.head == "per_position":  # segment RM: mark segment ends (docs/algorithms.md §5)
        from ray_rlhf.loops.segment_normalizer import segment_pairs

        pairs = (segment_pairs(cfg, base_dir, pairs[0]), segment_pairs(cfg, base_dir, pairs[1]))
    return pairs


def start_dir(cfg: RLHFConfig, policy_dir: Path) -> Path:
    """The model RM training starts from: `rm.init_path` (a reward model, continued) or
    `policy_dir` (a fresh head on the policy backbone)."""
    return Path(cfg.rm.init_path) if cfg.rm.init_path is not None else policy_dir


def run(cfg: RLHFConfig, run_dir: Path, policy_dir: Path) -> RMResult:
    """Train a reward model from `policy_dir` (or continue `rm.init_path`) as a Ray Train
    run; Ray must be initialized and `cfg` must have passed `preflight`."""
    from ray_rlhf.distributed.rm_trainer import run_rm_trainer
    from ray_rlhf.models.checkpoint import METADATA_FILE, load_json

    start = time.perf_counter()
    init_dir = start_dir(cfg, policy_dir)  # same vocabulary as the policy (preflight)
    train, held_out = load_rm_tensors(cfg, run_dir, policy_dir)
    meta = load_meta_tensors(cfg, policy_dir)
    n, width = train["chosen_input_ids"].shape
    n_eval = held_out["chosen_input_ids"].shape[0]
    held_out_source = (
        cfg.data.eval_preferences_path or cfg.data.preferences_path or "the toy world's pref_test"
    )
    check_held_out_pairs(n_eval, cfg, held_out_source)
    logger.info(
        "rm: %d pairs (max %d tokens), %d held out, %d steps, head %s, %d learners, ZeRO-%d%s",
        n,
        width,
        n_eval,
        cfg.rm.steps,
        cfg.rm.head,
        cfg.learner.num_workers,
        cfg.learner.zero_stage,
        _methods(cfg, meta),
    )
    if cfg.rm.init_path is not None:
        logger.info("rm: continuing the reward model %s", init_dir)
    out = run_rm_trainer(
        cfg, model_dir=init_dir, train=train, eval=held_out, run_dir=run_dir, meta=meta
    )
    if cfg.rm.head == "per_position":  # fit + store the location-aware normalizer
        from ray_rlhf.loops.segment_normalizer import fit_and_store, rl_prompt_texts

        prompts = None
        if cfg.segment.normalizer_source == "policy":
            prompts = rl_prompt_texts(cfg, run_dir, policy_dir)
        fit_and_store(cfg, out, policy_dir, train, prompts)
    accuracy = float(load_json(out / METADATA_FILE)["eval_accuracy"])
    return RMResult(out, policy_dir, accuracy, time.perf_counter() - start)


def _methods(cfg: RLHFConfig, meta: dict[str, torch.Tensor] | None) -> str:
    """The header's note on the contrastive term and MetaRM, if they are on."""
    note = ""
    if cfg.rm.contrastive.kind != "none":
        cl = cfg.rm.contrastive
        note += f", {cl.kind} on {cl.target} (beta {cl.weight:g}, views {cl.views})"
    if meta is not None:
        prompts = meta["input_ids"].shape[0] // cfg.rm.meta.k
        note += f", MetaRM on {prompts} prompts x {cfg.rm.meta.k} (eta {cfg.rm.meta.eta:g})"
    return note


def run_job(cfg: RLHFConfig) -> RMResult:
    """`ray-rlhf train-rm` / `jobs/train_rm.py`: run dir, Ray, RM training, marker."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("rm",))
    base_dir = prepare_base_model(cfg, run_dir)
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        result = run(cfg, run_dir, base_dir)
    finally:
        shutdown_ray(started)
    logger.info(
        "rm: reward model written to %s (eval accuracy %.3f, %.0f s)",
        result.reward_model_dir,
        result.eval_accuracy,
        result.seconds,
    )
    summary = {
        "reward_model_dir": str(result.reward_model_dir),
        "eval_accuracy": result.eval_accuracy,
        "seconds": result.seconds,
    }
    mark_done(run_dir, summary)
    return result
