"""The PPO learner's data and batch arithmetic: `Experience` (what one update needs), the
per-rank `BatchPlan`, and the reductions across learner ranks (global whitening, async
importance weights). Torch only; `PPOLearner` (learner/ppo.py) uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ray_rlhf import algo
from ray_rlhf.config import RLHFConfig
from ray_rlhf.models.memory import activation_bytes_per_row, auto_micro_batch


@dataclass
class Experience:
    """Everything one PPO update needs; all (N, T) and aligned with `input_ids`. The
    learner's logprobs are computed on response tokens only (0 elsewhere)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # True on response tokens
    old_logprobs: torch.Tensor | None  # None: the training forward's own (see make_experience)
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    old_values: torch.Tensor | None
    sample_logprobs: torch.Tensor  # the sampler's (vLLM's), for train/logprob_diff
    is_weights: torch.Tensor | None = None  # async: truncated pi_old / pi_sampler per token

    def rows(self, idx: torch.Tensor) -> Experience:
        """The rows `idx`, trimmed to their longest sequence."""
        width = int(self.attention_mask[idx].sum(dim=1).max())

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx, :width]

        return Experience(*(take(getattr(self, f)) for f in self.__dataclass_fields__))


def world_size() -> int:
    """Learner ranks in the process group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks, in float64."""
    t = torch.tensor(values, dtype=torch.float64)
    if world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def global_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Whiten over the response tokens of *all* ranks (REINFORCE++'s batch normalization).

    Two passes in float64 (the global mean, then the global sum of squared deviations):
    the one-pass E[x^2] - mean^2 in float32 loses the variance when the mean is large
    (rewards in the thousands).

    Args:
        x: (N, T) values; mask: (N, T) bool, True where a value counts.

    Returns:
        (N, T) in x's dtype: (x - mean) / (std + eps) on the mask, 0 elsewhere.
    """
    xd = x.double()
    n, s = all_reduce_sum([float(mask.sum()), float((xd * mask).sum())])
    mean = s / max(n, 1.0)
    (ss,) = all_reduce_sum([float((((xd - mean) * mask) ** 2).sum())])
    std = (ss / max(n - 1, 1.0)) ** 0.5
    return torch.where(mask, ((xd - mean) / (std + eps)).to(x.dtype), torch.zeros_like(x))


@dataclass(frozen=True)
class BatchPlan:
    """How one rank cuts its share of an iteration into optimizer steps.

    Every optimizer step (a minibatch of `ppo.minibatch_size` rows over all ranks) is
    `grad_accum` micro-batches of `micro` rows on every rank; an iteration is a whole number
    of minibatches, so no accumulation crosses a weight sync and no row is dropped.
    """

    rows: int
    """This rank's rows per iteration (prompts_per_iteration x n_samples / world)."""
    minibatch: int
    """This rank's rows per optimizer step (minibatch_size / world)."""
    micro: int
    """Rows per forward/backward."""

    @property
    def grad_accum(self) -> int:
        """Micro-batches per optimizer step."""
        return self.minibatch // self.micro

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.rows // self.minibatch


def batch_plan(cfg: RLHFConfig, world: int, row_bytes: int | None = None) -> BatchPlan:
    """The exact per-rank plan for `cfg` on `world` learners.

    Args:
        row_bytes: Activation bytes of one row (`ray_rlhf.models.memory`); sizes the
            micro-batch when `ppo.micro_batch_size` is unset.

    Raises:
        ValueError: naming the key when the sizes do not cut into whole pieces (the config
            check rejects these before Ray starts; this guards direct callers).
    """
    ppo = cfg.ppo
    total = ppo.prompts_per_iteration * cfg.rollout.n_samples
    if ppo.prompts_per_iteration % world or ppo.minibatch_size % world:
        raise ValueError(
            f"ppo.prompts_per_iteration ({ppo.prompts_per_iteration}) and ppo.minibatch_size "
            f"({ppo.minibatch_size}) must be multiples of the {world} learners"
        )
    rows, minibatch = total // world, ppo.minibatch_size // world
    if ppo.micro_batch_size is None:
        if row_bytes is None:
            raise ValueError("batch_plan: ppo.micro_batch_size is unset and no row_bytes given")
        micro = auto_micro_batch(minibatch, row_bytes)
    else:
        micro = min(ppo.micro_batch_size, minibatch)
    if rows % minibatch or minibatch % micro:
        raise ValueError(
            f"ppo.minibatch_size={ppo.minibatch_size} must divide the {total} samples of an "
            f"iteration, and ppo.micro_batch_size={ppo.micro_batch_size} its per-learner "
            f"share ({minibatch})"
        )
    return BatchPlan(rows=rows, minibatch=minibatch, micro=micro)


def row_bytes(cfg: RLHFConfig, model_config: Any) -> int:
    """Estimated activation bytes of one training row of this run: its token limits (the
    model's context when they are unset) in its dtype (`ray_rlhf.models.memory`)."""
    data = cfg.data
    context = int(getattr(model_config, "max_position_embeddings", 2048))
    if data.max_prompt_tokens is None or data.max_response_tokens is None:
        tokens, response = context, context
    else:
        tokens = data.max_prompt_tokens + data.max_response_tokens
        response = data.max_response_tokens
    dtype_bytes = 2 if cfg.model.dtype == "bfloat16" else 4
    return activation_bytes_per_row(
        model_config,
        tokens,
        response,
        dtype_bytes,
        checkpointed=cfg.learner.gradient_checkpointing,
    )


def all_reduce_max(value: float) -> float:
    """The largest `value` of any rank."""
    t = torch.tensor([value], dtype=torch.float64)
    if world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def async_is_weights(
    old_lp: torch.Tensor, sample_lp: torch.Tensor, mask: torch.Tensor, ppo: Any
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Async mode: truncated importance weights from the sampler's policy to pi_old (None
    when `ppo.is_correction` is `none`) and their `train/is_*` stats (the max over ranks)."""
    weights, st = algo.truncated_is_weights(old_lp, sample_lp, mask, ppo.is_cap)
    stats = {
        "train/is_ratio_mean": float(st.ratio_mean),
        "train/is_ratio_max": all_reduce_max(float(st.ratio_max)),
        "train/is_truncated_frac": float(st.truncated_frac),
    }
    return (weights if ppo.is_correction == "truncated" else None), stats


def logprob_diff(lp: torch.Tensor, sample_lp: torch.Tensor, mask: torch.Tensor) -> dict:
    """Mean and max |learner - sampler| logprob over response tokens (all (N, T))."""
    diff = (lp - sample_lp).abs() * mask
    return {
        "train/logprob_diff": float(diff.sum() / mask.sum().clamp(min=1)),
        "train/logprob_diff_max": float(diff.max()),
    }
