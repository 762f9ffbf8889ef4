"""PPOLearner: policy (+ critic) DeepSpeed engines and a frozen reference, in one process.

One learner per Ray Train worker; every worker gets its own contiguous share of prompt
groups, so group baselines (RLOO / GRPO) see whole groups. All math comes from
`ray_rlhf.algo`; this class only moves tensors and steps engines. Ray is not imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_rlhf import algo
from ray_rlhf.algo.contrastive import within_prompt_variance
from ray_rlhf.algo.tokens import token_logprobs, token_values
from ray_rlhf.config import RLHFConfig
from ray_rlhf.learner.engine import (
    full_state_dict,
    init_engine,
    load_engine_state,
    save_engine_state,
)
from ray_rlhf.models.builders import load_critic, load_policy, score_positions
from ray_rlhf.types import RolloutBatch, ScoredBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Experience:
    """Everything one PPO update needs; all (N, T) and aligned with `input_ids`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # True on response tokens
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    old_values: torch.Tensor | None

    def rows(self, idx: torch.Tensor) -> Experience:
        """The rows `idx`, trimmed to their longest sequence."""
        width = int(self.attention_mask[idx].sum(dim=1).max())

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx, :width]

        return Experience(*(take(getattr(self, f)) for f in self.__dataclass_fields__))


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if _world() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _global_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Whiten over the response tokens of *all* ranks (REINFORCE++'s batch normalization)."""
    n, s, ss = _all_reduce_sum(
        [float(mask.sum()), float((x * mask).sum()), float((x * x * mask).sum())]
    )
    mean = s / max(n, 1.0)
    var = max(ss / max(n, 1.0) - mean * mean, 0.0) * n / max(n - 1, 1.0)
    return torch.where(mask, (x - mean) / (var**0.5 + eps), torch.zeros_like(x))


class PPOLearner:
    """Holds the policy engine, the critic engine (GAE only) and the frozen reference."""

    def __init__(self, model_dir: str | Path, cfg: RLHFConfig) -> None:
        self.cfg = cfg
        self.model_dir = Path(model_dir)
        ppo, world = cfg.ppo, _world()
        dtype = _DTYPES[cfg.model.dtype]
        remote = cfg.model.trust_remote_code
        per_rank_minibatch = ppo.minibatch_size // world
        self.micro = min(ppo.micro_batch_size, per_rank_minibatch)
        self.grad_accum = max(1, per_rank_minibatch // self.micro)
        engine_args = dict(
            weight_decay=0.0,
            total_steps=1,
            warmup_steps=0,
            micro_batch_per_worker=self.micro,
            grad_accum=self.grad_accum,
            lr_floor=1.0,
        )
        policy = load_policy(model_dir, dtype=dtype, trust_remote_code=remote)
        self.policy = init_engine(policy, cfg.learner, lr=ppo.lr, **engine_args)
        self.reference = load_policy(model_dir, dtype=dtype, trust_remote_code=remote).eval()
        self.reference.requires_grad_(False)
        self.critic = None
        if ppo.advantage == "gae":
            critic = load_critic(
                model_dir, dtype=dtype, trust_remote_code=remote, seed=cfg.run.seed
            )
            self.critic = init_engine(critic, cfg.learner, lr=ppo.critic_lr, **engine_args)
        kl = ppo.kl
        self.kl_ctl: algo.KLController = (
            algo.AdaptiveKLController(kl.coef, kl.target, kl.horizon)
            if kl.adaptive
            else algo.FixedKLController(kl.coef)
        )

    # ------------------------------------------------------------------ experience

    @torch.no_grad()
    def _logprobs(self, model: Any, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, ids.shape[0], self.micro):
            sl = slice(start, start + self.micro)
            logits = model(input_ids=ids[sl], attention_mask=attn[sl].long()).logits
            chunks.append(token_logprobs(logits, ids[sl]))
        return torch.cat(chunks)

    @torch.no_grad()
    def _values(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        out = [
            token_values(
                score_positions(self.critic, ids[s : s + self.micro], attn[s : s + self.micro])
            )
            for s in range(0, ids.shape[0], self.micro)
        ]
        return torch.cat(out).float()

    @torch.no_grad()
    def sequence_kl_to_reference(self, batch: RolloutBatch) -> torch.Tensor:
        """KL(pi || pi_ref) of each sampled sequence, estimated from the sample itself.

        The k1 estimate summed over response tokens: sum_t log pi(y_t) - log pi_ref(y_t),
        with log pi the sampler's logprobs (the policy that produced the sample) and
        log pi_ref from the frozen reference. Its mean over samples of pi is KL(pi || pi_ref)
        per sequence (Gao et al. 2022 plot gold reward against it).

        Args:
            batch: N sampled rows; `sample_logprobs` (N, T) must come from the policy being
                measured at temperature 1.

        Returns:
            (N,) float32 nats per sequence.
        """
        mask = batch.response_mask
        ref_lp = self._logprobs(self.reference, batch.input_ids, batch.attention_mask)
        return ((batch.sample_logprobs - ref_lp) * mask).sum(dim=1).float()

    def make_experience(self, scored: ScoredBatch) -> tuple[Experience, dict[str, float]]:
        """Old / reference logprobs, values, KL-shaped rewards and advantages for a shard.

        Args:
            scored: this rank's rows (whole prompt groups), rewards already placed per token.
        """
        batch, ppo = scored.rollout, self.cfg.ppo
        ids, attn, mask = batch.input_ids, batch.attention_mask, batch.response_mask
        self.policy.eval()
        old_lp = self._logprobs(self.policy, ids, attn)
        ref_lp = self._logprobs(self.reference, ids, attn)
        kl = algo.kl_estimate(old_lp, ref_lp, ppo.kl.estimator) * mask
        beta = self.kl_ctl.value if ppo.kl.placement == "reward" else 0.0
        rewards = scored.token_rewards
        if ppo.whiten_rewards:
            rewards = _global_whiten(rewards, mask)
        shaped = algo.apply_kl_penalty(rewards, kl, beta, mask)
        returns = values = None
        if ppo.advantage == "gae":
            values = self._values(ids, attn) * mask
            raw_adv, returns = algo.compute_gae(shaped, values, mask, ppo.gamma, ppo.lam)
            advantages = _global_whiten(raw_adv, mask)
        elif ppo.advantage == "reinforce_pp":
            raw_adv = algo.reinforce_pp_returns(shaped, mask, ppo.gamma)
            advantages = _global_whiten(raw_adv, mask)
        else:
            seq = shaped.sum(dim=1)
            group = batch.n_samples
            seq_adv = (
                algo.rloo_advantages(seq, group)
                if ppo.advantage == "rloo"
                else algo.group_normalized_advantages(seq, group)
            )
            advantages = raw_adv = algo.broadcast_sequence_advantage(seq_adv, mask)
        seq_kl = kl.sum(dim=1)
        # Sequence advantage of a row = mean over its response tokens (the scalar itself for
        # group baselines); its variance across each prompt's samples (docs/algorithms.md §2).
        seq_adv_mean = algo.masked_mean(advantages, mask, dim=1)
        adv_var = within_prompt_variance(seq_adv_mean, batch.n_samples)
        lp_diff = (old_lp - batch.sample_logprobs).abs() * mask
        stats = {
            "train/kl": float(seq_kl.mean()),
            "train/kl_coef": float(self.kl_ctl.value),
            "train/logprob_diff": float(lp_diff.sum() / mask.sum().clamp(min=1)),
            "train/logprob_diff_max": float(lp_diff.max()),
            "train/adv_var_within_prompt": float(adv_var),
            # The same before the batch whitening of gae / reinforce_pp (the signal itself).
            "train/adv_var_within_prompt_unwhitened": float(
                within_prompt_variance(algo.masked_mean(raw_adv, mask, dim=1), batch.n_samples)
            ),
        }
        exp = Experience(ids, attn, mask, old_lp, ref_lp, advantages.float(), returns, values)
        return exp, stats

    # ------------------------------------------------------------------ update

    def _policy_micro_step(self, exp: Experience) -> dict[str, float]:
        ppo = self.cfg.ppo
        self.policy.train()
        logits = self.policy(
            input_ids=exp.input_ids, attention_mask=exp.attention_mask.long()
        ).logits
        logprobs = token_logprobs(logits, exp.input_ids)
        loss, stats = algo.policy_loss(
            logprobs, exp.old_logprobs, exp.advantages, exp.mask, ppo.clip_eps
        )
        if ppo.kl.placement == "loss":
            loss = loss + self.kl_ctl.value * algo.kl_loss(
                logprobs, exp.ref_logprobs, exp.mask, ppo.kl.estimator
            )
        self.policy.backward(loss)
        self.policy.step()
        with torch.no_grad():
            entropy = algo.masked_mean(algo.entropy_from_logits(logits[:, :-1]), exp.mask[:, 1:])
        return {
            "train/policy_loss": float(loss),
            "train/clip_frac": float(stats.clip_fraction),
            "train/approx_kl": float(stats.approx_kl),
            "train/entropy": float(entropy),
        }

    def _critic_micro_step(self, exp: Experience) -> dict[str, float]:
        self.critic.train()
        values = token_values(score_positions(self.critic, exp.input_ids, exp.attention_mask))
        loss, stats = algo.value_loss(
            values.float(), exp.old_values, exp.returns, exp.mask, self.cfg.ppo.value_clip
        )
        self.critic.backward(loss)
        self.critic.step()
        return {
            "train/value_loss": float(loss),
            "train/value_clip_frac": float(stats.clip_fraction),
        }

    def train(self, exp: Experience, *, seed: int) -> dict[str, float]:
        """`ppo.epochs` passes of shuffled micro-batches; DeepSpeed accumulates gradients
        over `grad_accum` micro-batches per optimizer step (token-mean loss per micro-batch).
        """
        n = exp.input_ids.shape[0]
        step_rows = self.micro * self.grad_accum
        usable = n - n % step_rows if n >= step_rows else n
        gen = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(self.cfg.ppo.epochs):
            order = torch.randperm(n, generator=gen)[:usable]
            for start in range(0, usable, self.micro):
                micro = exp.rows(order[start : start + self.micro])
                stats = self._policy_micro_step(micro)
                if self.critic is not None:
                    stats |= self._critic_micro_step(micro)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    def update_kl(self, mean_seq_kl: float, n_samples: int) -> None:
        """Advance the (adaptive) KL controller after an iteration."""
        self.kl_ctl.update(mean_seq_kl, n_samples)

    # ------------------------------------------------------------------ state

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Full policy weights in HF names (collective under ZeRO-3: call on every rank)."""
        return full_state_dict(self.policy)

    def save_checkpoint(self, directory: str | Path) -> None:
        """Engine states (every rank writes its shards)."""
        save_engine_state(self.policy, directory, tag="policy")
        if self.critic is not None:
            save_engine_state(self.critic, directory, tag="critic")

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore what `save_checkpoint` wrote."""
        load_engine_state(self.policy, directory, tag="policy")
        if self.critic is not None:
            load_engine_state(self.critic, directory, tag="critic")

    def kl_state(self) -> float:
        """The KL coefficient (saved with checkpoints)."""
        return float(self.kl_ctl.value)

    def set_kl_state(self, value: float) -> None:
        """Restore the KL coefficient."""
        self.kl_ctl.value = value
