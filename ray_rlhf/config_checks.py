"""Checks that span config sections: combinations of values that cannot work together.

`RLHFConfig.__post_init__` runs `check_combinations`, so a bad combination is a
`ConfigError` naming the dotted keys (and, where one exists, a value that works) before any
work starts. Checks inside one section live in that section's `__post_init__`. Checks that
hold for one stage only (`check_segment_reward`: PPO's reward) run in that stage's
`ray_rlhf.loops.preflight`, still before Ray starts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ray_rlhf.typed_config import check

if TYPE_CHECKING:
    from ray_rlhf.config import RLHFConfig


SEGMENT_ADVANTAGES = ("gae", "reinforce_pp")
"""The `ppo.advantage` estimators that use per-token rewards (the others sum them per
sequence, which turns segment / token rewards back into a bandit reward)."""


def requested_cpus(cfg: RLHFConfig) -> int:
    """CPUs the learners, rollout actors and reward actors of `cfg` request in total."""
    return (
        cfg.learner.num_workers * cfg.learner.cpus_per_worker
        + cfg.rollout.num_actors * cfg.rollout.cpus_per_actor
        + cfg.reward.num_actors
    )


def check_combinations(cfg: RLHFConfig) -> None:
    """Raises `ConfigError` for the first combination of values that cannot work."""
    workers = cfg.learner.num_workers
    per_worker, rest = divmod(cfg.sft.batch_size, workers)
    check(
        rest == 0 and per_worker > 0,
        "sft.batch_size",
        f"must be a positive multiple of learner.num_workers ({workers})",
    )
    check(
        cfg.rm.batch_size % workers == 0,
        "rm.batch_size",
        f"must be a multiple of learner.num_workers ({workers})",
    )
    check(
        cfg.rm.head != "per_position" or cfg.segment.reward_granularity != "bandit",
        "segment.reward_granularity",
        "must be 'segment' or 'token' with rm.head=per_position (it picks the segmentation)",
    )
    check(
        cfg.ppo.advantage not in ("rloo", "grpo") or cfg.rollout.n_samples >= 2,
        "rollout.n_samples",
        f"must be >= 2 for ppo.advantage={cfg.ppo.advantage!r} (group baselines)",
    )
    check_ppo_batches(cfg)
    wanted = requested_cpus(cfg)
    check(
        cfg.resources.address is not None
        or cfg.resources.num_cpus is None
        or cfg.resources.num_cpus >= wanted,
        "resources.num_cpus",
        f"{cfg.resources.num_cpus} is fewer than the {wanted} CPUs the learners, rollout and "
        f"reward actors request together (they would wait forever); set it to {wanted} or more, "
        "or null",
    )
    check(
        cfg.data.preferences_path is not None
        or cfg.meta.domains_per_step <= len(cfg.data.toyworld.domains),
        "meta.domains_per_step",
        f"must be <= the toy world's {len(cfg.data.toyworld.domains)} training domains",
    )
    check_rm_methods(cfg)
    check_iterate(cfg)


def check_segment_reward(cfg: RLHFConfig) -> None:
    """What PPO's segment / token rewards (`segment.reward_granularity`) need from the
    reward and the advantage estimator.

    Not part of `check_combinations`: a config that trains a per-position reward model
    (`train-rm rm.head=per_position`) sets the granularity and leaves `reward` and `ppo` at
    their defaults. `preflight` runs it for the stages that score rollouts, before Ray
    starts; `ray_rlhf.reward.segments.check_segment_reward_model` then checks the reward
    model itself.
    """
    granularity = cfg.segment.reward_granularity
    if granularity == "bandit":
        return
    check(
        cfg.reward.kind == "model",
        "segment.reward_granularity",
        f"{granularity!r} rewards are a per-position reward model's values, but "
        f"reward.kind={cfg.reward.kind!r} (a rule) gives one score per response; set "
        "reward.kind=model and reward.model_path to a reward model trained with "
        "rm.head=per_position, or segment.reward_granularity=bandit",
    )
    check(
        cfg.ppo.advantage in SEGMENT_ADVANTAGES,
        "segment.reward_granularity",
        f"{granularity!r} gives per-token rewards, but ppo.advantage={cfg.ppo.advantage!r} "
        "sums them into one reward per sequence; set ppo.advantage=gae (or reinforce_pp), "
        "or segment.reward_granularity=bandit",
    )


def check_iterate(cfg: RLHFConfig) -> None:
    """What `ray-rlhf iterate` (a set `iterate` section) cannot combine with."""
    it = cfg.iterate
    if it is None:
        return
    check(
        cfg.data.meta_responses_path is None,
        "data.meta_responses_path",
        "must be unset under iterate: every round's policy samples are MetaRM's meta responses",
    )
    check(
        cfg.rm.init_path is None,
        "rm.init_path",
        "must be unset under iterate: each round continues the last round's RM; give the "
        "starting RM as reward.model_path",
    )
    check(
        cfg.rm.head == "scalar",
        "rm.head",
        "iterate updates a scalar reward model (rm.head=scalar)",
    )
    check(
        cfg.segment.reward_granularity == "bandit",
        "segment.reward_granularity",
        "must be 'bandit' under iterate: its PPO rounds score with the round's scalar reward "
        "model (one score per response)",
    )
    check(
        not cfg.contrastive.enabled,
        "contrastive.enabled",
        "is not supported under iterate (offline baselines belong to one reward model)",
    )
    k = it.k(cfg.rm.meta.k)
    check(
        not cfg.rm.meta.enabled or k >= cfg.rm.meta.k,
        "iterate.samples_per_prompt",
        f"{k} responses per prompt are fewer than the rm.meta.k = {cfg.rm.meta.k} MetaRM compares",
    )


def check_rm_methods(cfg: RLHFConfig) -> None:
    """Cross-section checks of `rm.contrastive` and `rm.meta`."""
    workers, zero = cfg.learner.num_workers, cfg.learner.zero_stage
    check(
        not (cfg.rm.meta.enabled and zero == 3),
        "rm.meta.enabled",
        "MetaRM needs the full parameters on every rank for its ascent step; it is not "
        "supported with learner.zero_stage=3 (use learner.zero_stage 0, 1 or 2)",
    )
    check(
        not cfg.rm.meta.enabled
        or cfg.data.meta_responses_path is not None
        or cfg.iterate is not None,  # its rounds sample them
        "data.meta_responses_path",
        "required when rm.meta.enabled is true (prompts with k policy samples each)",
    )
    check(
        cfg.rm.meta.batch_size % workers == 0,
        "rm.meta.batch_size",
        f"must be a multiple of learner.num_workers ({workers})",
    )
    check(
        not (cfg.rm.contrastive.kind == "swav" and zero == 3),
        "rm.contrastive.kind",
        "swav reads its prototypes outside the model's forward, which ZeRO-3 partitions; "
        "use learner.zero_stage 0, 1 or 2, or kind simcse",
    )
    check(
        not (
            cfg.rm.contrastive.kind != "none"
            and cfg.rm.contrastive.views == "forwards"
            and zero == 3
        ),
        "rm.contrastive.views",
        "forwards runs the two dropout views in a forward of their own next to the BT rows' "
        "(two forwards per backward), which is not supported with learner.zero_stage=3; use "
        "rm.contrastive.views=shared or learner.zero_stage 0, 1 or 2",
    )
    check(
        cfg.rm.contrastive.kind == "none"
        or cfg.rm.contrastive.target == "responses"
        or cfg.rm.batch_size // workers >= 2,
        "rm.batch_size",
        "needs >= 2 pairs per learner worker with rm.contrastive.target=differences "
        "(the other pairs of the batch are the negatives)",
    )


def check_ppo_batches(cfg: RLHFConfig) -> None:
    """Every PPO iteration is whole optimizer steps on every learner.

    An iteration has P x n samples (`ppo.prompts_per_iteration` x `rollout.n_samples`); the
    learners split its P prompt groups evenly and step once per `ppo.minibatch_size` samples.
    A minibatch larger than the iteration, or one that does not divide it, leaves DeepSpeed's
    gradient accumulation straddling iterations (it steps only every k-th iteration) or
    drops samples.
    """
    ppo, workers = cfg.ppo, cfg.learner.num_workers
    prompts, n = ppo.prompts_per_iteration, cfg.rollout.n_samples
    samples, minibatch = prompts * n, ppo.minibatch_size
    check(
        minibatch % workers == 0,
        "ppo.minibatch_size",
        f"must be a multiple of learner.num_workers ({workers})",
    )
    check(
        prompts % workers == 0,
        "ppo.prompts_per_iteration",
        f"must be a multiple of learner.num_workers ({workers}): each learner trains on an "
        "equal share of the prompt groups",
    )
    iteration = f"ppo.prompts_per_iteration x rollout.n_samples = {prompts} x {n} = {samples}"
    if minibatch > samples or samples % minibatch:
        problem = (
            f"{minibatch} is more than the {iteration} samples of an iteration, so DeepSpeed "
            f"would step only once every {math.ceil(minibatch / samples)} iterations"
            if minibatch > samples
            else f"{minibatch} does not divide the {iteration} samples of an iteration"
        )
        check(False, "ppo.minibatch_size", f"{problem}; {_suggest_minibatch(cfg)}")
    per_worker = minibatch // workers
    check(
        ppo.micro_batch_size is None or _whole_micro_batches(per_worker, ppo.micro_batch_size),
        "ppo.micro_batch_size",
        f"{ppo.micro_batch_size} must divide the per-learner minibatch ppo.minibatch_size / "
        f"learner.num_workers = {per_worker} (or be at least as large), else samples are dropped",
    )


def _whole_micro_batches(per_worker: int, micro_batch_size: int) -> bool:
    """Whether a learner's share of a minibatch is whole micro-batches (the learner uses
    micro-batches of min(micro_batch_size, per_worker) samples)."""
    return per_worker % min(micro_batch_size, per_worker) == 0


def _suggest_minibatch(cfg: RLHFConfig) -> str:
    """A `ppo.minibatch_size` (else a `ppo.prompts_per_iteration`) that passes the checks."""
    ppo, workers = cfg.ppo, cfg.learner.num_workers
    samples = ppo.prompts_per_iteration * cfg.rollout.n_samples
    micro = ppo.micro_batch_size or 1  # unset: chosen later, always a divisor
    fits = [
        m
        for m in range(workers, samples + 1, workers)
        if samples % m == 0 and m % micro == 0 and _whole_micro_batches(m // workers, micro)
    ]
    below = [m for m in fits if m <= ppo.minibatch_size]
    if fits:
        return f"set ppo.minibatch_size={max(below) if below else min(fits)}"
    group = ppo.minibatch_size // math.gcd(ppo.minibatch_size, cfg.rollout.n_samples)
    prompts = math.lcm(group, workers)
    prompts *= math.ceil(ppo.prompts_per_iteration / prompts)
    return f"set ppo.prompts_per_iteration={prompts} or lower ppo.minibatch_size"
