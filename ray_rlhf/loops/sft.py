"""SFT driver: config -> base model + data -> Ray Train (DeepSpeed) -> HF policy dir."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_rlhf.config import RLHFConfig, requested_cpus
from ray_rlhf.loops.common import prepare_base_model, toyworld_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTResult:
    """Where the trained policy is, and how long it took."""

    policy_dir: Path
    base_dir: Path
    seconds: float


def tokenize_sft(
    prompts: list[str], responses: list[str], tokenizer, max_length: int
) -> dict[str, torch.Tensor]:
    """Encode (prompt, response + EOS) pairs into right-padded tensors.

    Returns:
        input_ids (N, T) long, attention_mask (N, T) bool, response_mask (N, T) bool.
    """
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch

    examples = [
        encode_prompt_response(tokenizer, p, r, max_length=max_length)
        for p, r in zip(prompts, responses, strict=True)
    ]
    return pad_batch(examples, tokenizer.pad_token_id)


def load_sft_tensors(cfg: RLHFConfig, run_dir: Path, base_dir: Path) -> dict[str, torch.Tensor]:
    """Validate and tokenize the SFT data (the toy world's split unless `data.sft_path`)."""
    from ray_rlhf.data.limits import max_sequence_tokens
    from ray_rlhf.data.sft import load_sft
    from ray_rlhf.models.builders import load_tokenizer

    tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    source = cfg.data.sft_path or toyworld_files(cfg, run_dir)["sft"]
    dataset = load_sft(
        str(source),
        tokenizer=tokenizer,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        max_response_tokens=cfg.data.max_response_tokens,
        chat_template=cfg.data.chat_template,
    )
    return tokenize_sft(
        dataset["prompt"], dataset["response"], tokenizer, max_sequence_tokens(cfg.data)
    )


def run(cfg: RLHFConfig, run_dir: Path) -> SFTResult:
    """Train the policy with SFT as a Ray Train run; Ray must be initialized and `cfg` must
    have passed `preflight`."""
    from ray_rlhf.distributed.sft_trainer import run_sft_trainer

    start = time.perf_counter()
    base_dir = prepare_base_model(cfg, run_dir)
    data = load_sft_tensors(cfg, run_dir, base_dir)
    n, width = data["input_ids"].shape
    logger.info(
        "sft: %d examples (max %d tokens), %d steps, %d learners, ZeRO-%d",
        n,
        width,
        cfg.sft.steps,
        cfg.learner.num_workers,
        cfg.learner.zero_stage,
    )
    policy_dir = run_sft_trainer(cfg, model_dir=base_dir, data=data, run_dir=run_dir)
    return SFTResult(policy_dir, base_dir, time.perf_counter() - start)


def run_job(cfg: RLHFConfig) -> SFTResult:
    """`ray-rlhf sft` / `jobs/sft.py`: run dir, Ray (embedded or the job's), SFT, marker."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("sft",))
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        result = run(cfg, run_dir)
    finally:
        shutdown_ray(started)
    logger.info("sft: policy written to %s (%.0f s)", result.policy_dir, result.seconds)
    mark_done(run_dir, {"policy_dir": str(result.policy_dir), "seconds": result.seconds})
    return result
