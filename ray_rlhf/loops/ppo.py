"""PPO driver: prompts + pools + Ray Train learners -> PPO policy dir and metrics.

policy (SFT) ──► RolloutPool (vLLM) ──► RewardPool ──► PPO learners (Ray Train, DeepSpeed)
     ▲                                                        │
     └──────────────── weight sync after every iteration ◄────┘
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_rlhf.config import RLHFConfig
from ray_rlhf.loops.common import toyworld_files

if TYPE_CHECKING:
    from ray_rlhf.distributed.ppo_trainer import PromptSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOResult:
    """Where the PPO policy and metrics are, and how long it took."""

    policy_dir: Path
    metrics_dir: Path
    seconds: float


MAX_HELD_OUT_PROMPTS = 256
"""Most prompts `data.eval_fraction` holds out of `data.prompts_path`."""


def load_prompt_sets(cfg: RLHFConfig, run_dir: Path, tokenizer: Any) -> tuple[PromptSet, PromptSet]:
    """Train and eval prompts, validated.

    Train: `data.prompts_path`, else the toy world's train prompts (or, with
    `data.toyworld.ppo_prompts=heldout`, half of its held-out domains' prompts). Eval:
    `data.eval_prompts_path`; else, with `data.prompts_path`, a seeded slice of it
    (`data.eval_fraction`, 1 to `MAX_HELD_OUT_PROMPTS` prompts, not trained on); else the
    toy world's test prompts (with `ppo_prompts=heldout`, the other half of the held-out
    domains' prompts).

    Raises:
        DataValidationError: Naming file, row and field of a bad prompt, or a prompts file
            too small to hold any out.
    """
    from ray_rlhf.data.errors import DataValidationError
    from ray_rlhf.data.prompts import load_prompts
    from ray_rlhf.data.sampler import held_out_split
    from ray_rlhf.distributed.ppo_trainer import PromptSet

    data = cfg.data

    def load(source: str | Path) -> Any:
        return load_prompts(
            str(source),
            tokenizer=tokenizer,
            max_prompt_tokens=data.max_prompt_tokens,
            chat_template=data.chat_template,
        )

    def prompt_set(ds: Any, toyworld: bool) -> PromptSet:
        texts = (list(ds[name]) for name in ("id", "prompt", "user_prompt"))
        return PromptSet(*texts, toyworld=toyworld)

    if data.prompts_path is None:
        toy = toyworld_files(cfg, run_dir)
        if data.toyworld.ppo_prompts == "heldout" and data.eval_prompts_path is None:
            train, held_out = held_out_split(load(toy["heldout_prompts"]), 0.5, cfg.run.seed)
            return prompt_set(train, toyworld=True), prompt_set(held_out, toyworld=True)
        source = "heldout_prompts" if data.toyworld.ppo_prompts == "heldout" else "train_prompts"
        train = prompt_set(load(toy[source]), toyworld=True)
        eval_source = data.eval_prompts_path or toy["test_prompts"]
        return train, prompt_set(load(eval_source), toyworld=data.eval_prompts_path is None)
    train = load(data.prompts_path)
    if data.eval_prompts_path is not None:
        held_out = load(data.eval_prompts_path)
    elif train.num_rows < 2:
        raise DataValidationError(
            data.prompts_path,
            "a single prompt is too few to hold eval prompts out of; add prompts or set "
            "data.eval_prompts_path",
        )
    else:
        train, held_out = held_out_split(
            train, data.eval_fraction, cfg.run.seed, max_rows=MAX_HELD_OUT_PROMPTS
        )
    return prompt_set(train, toyworld=False), prompt_set(held_out, toyworld=False)


def check_baselines(cfg: RLHFConfig, prompt_sets: list) -> None:
    """Contrastive rewards: every train / eval prompt has an offline baseline (or
    `contrastive.on_missing` is `raw`); a bad or incomplete baseline file stops the run here,
    before any actor starts."""
    from ray_rlhf.reward.contrastive import check_coverage, load_baselines

    assert cfg.contrastive.baselines_path is not None  # ContrastiveConfig checks this
    store = load_baselines(cfg.contrastive.baselines_path, cfg.contrastive)
    sets = [(s.ids, s.texts) for s in prompt_sets]
    check_coverage(store, cfg.contrastive.on_missing, sets)


def start_pools(cfg: RLHFConfig, policy_dir: Path, *, contrastive: bool = True) -> dict:
    """Rollout and reward pools (plain Ray actors owned by this driver).

    Args:
        cfg: `rollout`, `reward` and the reward stages (`build_transforms`).
        policy_dir: The policy the rollout actors start from (and the scorers' reference).
        contrastive: Include the contrastive baseline subtraction (the baseline job
            scores its samples without it).

    Returns:
        {"rollout": RolloutPool, "reward": RewardPool}; the caller shuts both down.
    """
    from ray_rlhf.data.limits import max_sequence_tokens
    from ray_rlhf.distributed.reward_pool import RewardPool
    from ray_rlhf.distributed.rollout_pool import RolloutPool
    from ray_rlhf.reward.transforms import build_transforms

    rollout = RolloutPool(
        str(policy_dir),
        cfg.rollout,
        max_model_len=max_sequence_tokens(cfg.data),
        dtype=cfg.model.dtype,
        seed=cfg.run.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        transport=cfg.rollout.sync_transport,
        custom_resources=cfg.resources.custom_resources,
    )
    try:
        reward = RewardPool(
            cfg.reward,
            trust_remote_code=cfg.model.trust_remote_code,
            policy_dir=str(policy_dir),
            transforms=build_transforms(cfg, contrastive=contrastive),
        )
    except Exception:
        rollout.shutdown()
        raise
    return {"rollout": rollout, "reward": reward}


def run(cfg: RLHFConfig, run_dir: Path, policy_dir: Path) -> PPOResult:
    """PPO from `policy_dir` (usually the SFT policy); Ray must be initialized and `cfg`
    must have passed `preflight`."""
    from ray_rlhf.distributed.ppo_trainer import run_ppo_trainer
    from ray_rlhf.models.builders import load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
    prompts, eval_prompts = load_prompt_sets(cfg, run_dir, tokenizer)
    if cfg.contrastive.enabled:
        check_baselines(cfg, [prompts, eval_prompts])
    logger.info(
        "ppo: %d prompts (%d held out), %d iterations of %d x %d samples, advantage %s, "
        "%d rollout / %d reward actor(s), %d learners, ZeRO-%d",
        len(prompts.ids),
        len(eval_prompts.ids),
        cfg.ppo.iterations,
        cfg.ppo.prompts_per_iteration,
        cfg.rollout.n_samples,
        cfg.ppo.advantage,
        cfg.rollout.num_actors,
        cfg.reward.num_actors,
        cfg.learner.num_workers,
        cfg.learner.zero_stage,
    )
    pools = start_pools(cfg, policy_dir)
    try:
        out = run_ppo_trainer(
            cfg,
            model_dir=policy_dir,
            pools=pools,
            prompts=prompts,
            eval_prompts=eval_prompts,
            run_dir=run_dir,
        )
    finally:
        for pool in pools.values():
            pool.shutdown()
    return PPOResult(out, run_dir / "ppo", time.perf_counter() - start)


def run_job(cfg: RLHFConfig) -> PPOResult:
    """`ray-rlhf ppo` / `jobs/train_ppo.py`: PPO from `model.path`, or from a toy-world SFT
    policy trained first when `model.path` is unset."""
    from ray_rlhf.config import requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops import sft
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    if cfg.model.path is None:
        logger.info("model.path is not set: SFT of the tiny model (model.tiny) runs first")
    cfg = preflight(cfg, run_dir, ("ppo",) if cfg.model.path else ("sft", "ppo"))
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        policy = Path(cfg.model.path) if cfg.model.path else sft.run(cfg, run_dir).policy_dir
        result = run(cfg, run_dir, policy)
    finally:
        shutdown_ray(started)
    logger.info("ppo: policy written to %s (%.0f s)", result.policy_dir, result.seconds)
    if cfg.segment.reward_granularity != "bandit":  # sampled responses, boundaries marked
        from ray_rlhf.loops.segment_report import write_segment_report
        from ray_rlhf.models.builders import load_tokenizer

        _, held_out = load_prompt_sets(cfg, run_dir, load_tokenizer(result.policy_dir))
        write_segment_report(
            cfg,
            result.policy_dir,
            held_out.texts[:32],
            run_dir / "segments.md",
            toyworld=held_out.toyworld,
        )
    mark_done(run_dir, {"policy_dir": str(result.policy_dir), "seconds": result.seconds})
    return result
