"""Config sections of the PPO loop: rollout actors (`rollout`), reward actors (`reward`),
PPO itself (`ppo`) and its KL penalty (`ppo.kl`); `ray_rlhf.config` roots them under
`RLHFConfig` and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ray_rlhf.typed_config import check as _check

EVAL_SAMPLED_TEMPERATURE = 1.0
"""Temperature (and top-p 1) of every sampled evaluation (`eval/sampled/*`), whatever
`rollout.temperature` is: the policy's own distribution, the one KL(pi || pi_ref) measures."""


@dataclass(frozen=True)
class RolloutConfig:
    """vLLM rollout actors."""

    num_actors: int = 1
    """Rollout actors in the pool (resizable between iterations)."""
    cpus_per_actor: int = 1
    """CPUs per actor; also the engine's thread count."""
    gpus_per_actor: float = 0.0
    """GPUs per actor (0 on CPU machines)."""
    n_samples: int = 4
    """Samples per prompt."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    kv_cache_mib: int = 64
    """KV-cache size per engine (vLLM's CPU auto-sizing is wrong on these machines)."""
    enforce_eager: bool = True
    """Skip graph capture / compilation (faster start; the CPU path needs no compile)."""
    max_restarts: int = 2
    """Ray restarts of a dead rollout actor."""
    sync_transport: Literal["object_store", "broadcast"] = "object_store"
    """Weight sync: Ray object store, or a torch.distributed broadcast group (gloo on CPU,
    NCCL on GPU) spanning learner rank 0 and the rollout actors."""
    ignore_eos: bool = False
    """Keep sampling past EOS up to the length limit, so every response has exactly
    `data.max_response_tokens` tokens (benchmarks: equal work across systems)."""
    resize_timeout_s: float = 300.0
    """How long growing the pool (control.yaml `rollout_actors`) waits for the new actors to
    be placed and start (an autoscaler may first add a node). Past it they are cancelled and
    the run goes on at its current size, saying so once in the console and metrics."""

    def __post_init__(self) -> None:
        _check(self.num_actors >= 1, "num_actors", "must be >= 1")
        _check(self.n_samples >= 1, "n_samples", "must be >= 1")
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.kv_cache_mib >= 1, "kv_cache_mib", "must be >= 1")
        _check(self.resize_timeout_s > 0, "resize_timeout_s", "must be > 0")


@dataclass(frozen=True)
class RewardConfig:
    """Reward actors."""

    kind: Literal["rule", "model"] = "rule"
    """`rule`: a Python function; `model`: a reward-model directory."""
    rule: str = "ray_rlhf.data.toyworld:true_reward"
    """`module:function` or `path/to/file.py:function` with signature (prompt, response)."""
    model_path: str | None = None
    """Reward-model directory when kind is `model`."""
    num_actors: int = 1
    """Reward actors in the pool."""
    clip: float = 10.0
    """Rewards are clamped to [-clip, clip]."""
    prompt_free_prompts: int = 0
    """Score every response under this many other in-batch prompts and log the prompt-free /
    prompt-related split (`reward/prompt_free_*`, docs/algorithms.md §1); 0 turns it off. A
    diagnostic: rewards are unchanged."""
    replace_timeout_s: float = 300.0
    """How long a new reward actor that replaces one out of restarts may take to be placed
    and load its model; past it the run stops with a message naming this key."""

    def __post_init__(self) -> None:
        _check(
            self.kind != "model" or self.model_path is not None,
            "model_path",
            "required when kind is 'model'",
        )
        _check(":" in self.rule, "rule", "must look like 'module:function' or 'file.py:function'")
        _check(self.num_actors >= 1, "num_actors", "must be >= 1")
        _check(self.clip > 0, "clip", "must be > 0")
        _check(self.prompt_free_prompts >= 0, "prompt_free_prompts", "must be >= 0")
        _check(self.replace_timeout_s > 0, "replace_timeout_s", "must be > 0")


@dataclass(frozen=True)
class KLConfig:
    """KL regularization toward the reference policy."""

    coef: float = 0.05
    """Initial (or fixed) KL coefficient beta."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator (k1 only with placement=reward: as a loss term its expected
    gradient is zero)."""
    placement: Literal["reward", "loss"] = "reward"
    """Subtract beta*KL from per-token rewards, or add it to the policy loss."""
    adaptive: bool = False
    """Adapt beta toward `target` (Ziegler et al. 2019)."""
    target: float = 6.0
    """Target KL per sequence for the adaptive controller."""
    horizon: int = 10000
    """Adaptive controller horizon in samples."""

    def __post_init__(self) -> None:
        _check(self.coef >= 0, "coef", "must be >= 0")
        _check(
            self.coef > 0 or not self.adaptive,
            "coef",
            "must be > 0 with adaptive=true (the controller scales it; 0 stays 0)",
        )
        _check(self.target > 0, "target", "must be > 0")
        _check(self.horizon > 0, "horizon", "must be > 0")
        _check(
            self.placement != "loss" or self.estimator != "k1",
            "estimator",
            "k1 has zero expected gradient as a loss term (it acts only through sampling); "
            "with placement=loss use k3 (GRPO's choice) or k2",
        )


@dataclass(frozen=True)
class PPOConfig:
    """PPO and group-baseline policy optimization."""

    iterations: int = 30
    """Generate -> score -> learn -> sync iterations."""
    prompts_per_iteration: int = 64
    """Prompts per iteration (each sampled `rollout.n_samples` times)."""
    advantage: Literal["gae", "rloo", "grpo", "reinforce_pp"] = "rloo"
    """Advantage estimator; `gae` trains a critic."""
    epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 64
    """Samples per optimizer step (global)."""
    micro_batch_size: int | None = None
    """Samples per forward/backward per learner (gradient accumulation; the loss is the
    same token mean whatever it is). None: the largest divisor of a learner's minibatch
    share, at most 32, whose estimated activations fit 2 GiB (`ray_rlhf.models.memory`;
    32 for the toy world's tiny models, 2-4 for a 135M chat model)."""
    lr: float | None = None
    """Policy learning rate. None: 1e-6 for a pretrained model (20M parameters or more),
    1e-4 below (`ray_rlhf.learning_rates`)."""
    critic_lr: float | None = None
    """Critic learning rate (gae only). None: 9e-6 for a pretrained model, 5e-4 below."""
    clip_eps: float = 0.2
    """Ratio clip."""
    value_clip: float = 0.25
    """Value clip (gae only)."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten scores over the batch before advantages."""
    eval_every: int = 5
    """Evaluate on held-out prompts every this many iterations."""
    eval_at_start: bool = False
    """Also evaluate the starting policy before the first update (logged as step 0)."""
    checkpoint_every: int = 10
    """Report a resumable checkpoint every this many iterations (and at the end)."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty."""
    async_rollouts: bool = False
    """Generate iteration k+1 while the learners train on k (one iteration ahead), so its
    samples come from the weights one version behind the learner's; corrected by the
    importance weights of `is_correction`. Always computes the old-logprob forward."""
    max_staleness: int = 1
    """Async mode: the most weights versions a sample may be behind the learner's weights
    the update starts from; an older batch is regenerated with the current weights."""
    is_correction: Literal["truncated", "none"] = "truncated"
    """Async mode: per-token weight min(pi_old / pi_sampler, is_cap) on the policy loss
    (truncated importance sampling), or `none` (the ratios are still logged)."""
    is_cap: float = 2.0
    """Truncation level of the async importance weights (>= 1)."""

    def __post_init__(self) -> None:
        _check(self.iterations > 0, "iterations", "must be > 0")
        _check(self.prompts_per_iteration > 0, "prompts_per_iteration", "must be > 0")
        _check(self.epochs > 0, "epochs", "must be > 0")
        _check(self.eval_every > 0, "eval_every", "must be > 0")
        _check(self.checkpoint_every > 0, "checkpoint_every", "must be > 0")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size > 0, "micro_batch_size", "must be > 0")
            _check(
                self.minibatch_size % self.micro_batch_size == 0,
                "minibatch_size",
                f"must be a multiple of micro_batch_size ({self.micro_batch_size})",
            )
        _check(self.lr is None or self.lr > 0, "lr", "must be > 0")
        _check(self.critic_lr is None or self.critic_lr > 0, "critic_lr", "must be > 0")
        _check(0 < self.clip_eps < 1, "clip_eps", "must be in (0, 1)")
        _check(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        _check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        _check(
            not self.async_rollouts or self.max_staleness >= 1,
            "max_staleness",
            "must be >= 1 with async_rollouts=true (samples are generated one version ahead)",
        )
        _check(self.is_cap >= 1, "is_cap", "must be >= 1 (below 1 on-policy tokens lose weight)")
