"""PPOLearner: policy (+ critic) DeepSpeed engines and a frozen reference, in one process.

One learner per Ray Train worker; every worker gets its own contiguous share of prompt
groups, so group baselines (RLOO / GRPO) see whole groups. All math comes from
`ray_rlhf.algo`; this class only moves tensors and steps engines. Ray is not imported.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import torch

from ray_rlhf import algo
from ray_rlhf.algo.contrastive import within_prompt_variance
from ray_rlhf.algo.tokens import (
    response_token_entropy,
    response_token_logprobs,
    token_values,
)
from ray_rlhf.config import RLHFConfig
from ray_rlhf.learner.engine import (
    full_state_dict,
    init_engine,
    load_engine_state,
    save_engine_state,
)
from ray_rlhf.learner.logits import response_logits
from ray_rlhf.learner.ppo_batch import (
    Experience,
    all_reduce_sum,
    async_is_weights,
    batch_plan,
    global_whiten,
    logprob_diff,
    row_bytes,
    world_size,
)
from ray_rlhf.learning_rates import lr_for
from ray_rlhf.models.builders import load_critic, load_policy, score_positions
from ray_rlhf.types import RolloutBatch, ScoredBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PPOLearner:
    """Holds the policy engine, the critic engine (GAE only) and the frozen reference."""

    def __init__(self, model_dir: str | Path, cfg: RLHFConfig) -> None:
        self.cfg = cfg
        self.model_dir = Path(model_dir)
        ppo, world = cfg.ppo, world_size()
        dtype = _DTYPES[cfg.model.dtype]
        remote = cfg.model.trust_remote_code
        policy = load_policy(model_dir, dtype=dtype, trust_remote_code=remote)
        self.plan = batch_plan(cfg, world, row_bytes(cfg, policy.config))
        self.micro, self.grad_accum = self.plan.micro, self.plan.grad_accum
        # One epoch of one minibatch: every micro-batch runs before the iteration's only
        # optimizer step, so the old logprobs are the training forward's own (exactly).
        # Not in async mode: the sampler's weights are older, and the importance weights
        # need pi_old before the first micro-batch.
        self.old_logprobs_from_training = (
            ppo.epochs == 1 and self.plan.steps == 1 and not ppo.async_rollouts
        )
        engine_args = dict(
            weight_decay=0.0,
            total_steps=1,
            warmup_steps=0,
            micro_batch_per_worker=self.micro,
            grad_accum=self.grad_accum,
            lr_floor=1.0,
        )
        lr = lr_for(ppo.lr, "ppo.lr", policy)
        self.policy = init_engine(policy, cfg.learner, lr=lr, **engine_args)
        self.reference = load_policy(model_dir, dtype=dtype, trust_remote_code=remote).eval()
        self.reference.requires_grad_(False)
        self.critic = None
        if ppo.advantage == "gae":
            critic = load_critic(
                model_dir, dtype=dtype, trust_remote_code=remote, seed=cfg.run.seed
            )
            critic_lr = lr_for(ppo.critic_lr, "ppo.critic_lr", critic)
            self.critic = init_engine(critic, cfg.learner, lr=critic_lr, **engine_args)
        kl = ppo.kl
        self.kl_ctl: algo.KLController = (
            algo.AdaptiveKLController(kl.coef, kl.target, kl.horizon)
            if kl.adaptive
            else algo.FixedKLController(kl.coef)
        )

    # ------------------------------------------------------------------ experience

    def _hf(self, model: Any) -> torch.nn.Module:
        """The HF model inside `model` (the policy engine's module, or the reference)."""
        return self.policy.module if model is self.policy else model

    @torch.no_grad()
    def _logprobs(
        self, model: Any, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, T) float32 logprobs of the response tokens (`mask`), 0 elsewhere; forwards
        of `micro` rows, the head applied to response positions only."""
        chunks = []
        for start in range(0, ids.shape[0], self.micro):
            sl = slice(start, start + self.micro)
            logits = response_logits(model, self._hf(model), ids[sl], attn[sl], mask[sl])
            chunks.append(response_token_logprobs(logits, ids[sl], mask[sl]))
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
        ref_lp = self._logprobs(self.reference, batch.input_ids, batch.attention_mask, mask)
        return ((batch.sample_logprobs - ref_lp) * mask).sum(dim=1).float()

    def make_experience(self, scored: ScoredBatch) -> tuple[Experience, dict[str, float]]:
        """Old / reference logprobs, values, KL-shaped rewards and advantages for a shard.

        Args:
            scored: this rank's rows (whole prompt groups), rewards already placed per token.
        """
        batch, ppo = scored.rollout, self.cfg.ppo
        ids, attn, mask = batch.input_ids, batch.attention_mask, batch.response_mask
        self.policy.eval()
        # With one epoch of one minibatch the policy does not change before its only
        # optimizer step, so the training forward's detached logprobs are the old ones
        # (ratio exactly 1): skip this forward, and take the KL penalty's log pi from the
        # sampler (the same weights; `train/logprob_diff` measures the numeric gap).
        old_lp = None
        if not self.old_logprobs_from_training:
            old_lp = self._logprobs(self.policy, ids, attn, mask)
        behaviour_lp = batch.sample_logprobs if old_lp is None else old_lp
        ref_lp = self._logprobs(self.reference, ids, attn, mask)
        kl = algo.kl_estimate(behaviour_lp, ref_lp, ppo.kl.estimator) * mask
        beta = self.kl_ctl.value if ppo.kl.placement == "reward" else 0.0
        rewards = scored.token_rewards
        if ppo.whiten_rewards:
            rewards = global_whiten(rewards, mask)
        shaped = algo.apply_kl_penalty(rewards, kl, beta, mask)
        returns = values = None
        if ppo.advantage == "gae":
            values = self._values(ids, attn) * mask
            raw_adv, returns = algo.compute_gae(shaped, values, mask, ppo.gamma, ppo.lam)
            advantages = global_whiten(raw_adv, mask)
        elif ppo.advantage == "reinforce_pp":
            raw_adv = algo.reinforce_pp_returns(shaped, mask, ppo.gamma)
            advantages = global_whiten(raw_adv, mask)
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
        stats = {
            "train/kl": float(seq_kl.mean()),
            "train/kl_coef": float(self.kl_ctl.value),
            "train/adv_var_within_prompt": float(adv_var),
            # The same before the batch whitening of gae / reinforce_pp (the signal itself).
            "train/adv_var_within_prompt_unwhitened": float(
                within_prompt_variance(algo.masked_mean(raw_adv, mask, dim=1), batch.n_samples)
            ),
        }
        if old_lp is not None:
            stats |= logprob_diff(old_lp, batch.sample_logprobs, mask)
        is_weights = None
        if ppo.async_rollouts:
            is_weights, is_stats = async_is_weights(old_lp, batch.sample_logprobs, mask, ppo)
            stats |= is_stats
        exp = Experience(
            ids,
            attn,
            mask,
            old_lp,
            ref_lp,
            advantages.float(),
            returns,
            values,
            batch.sample_logprobs,
            is_weights,
        )
        return exp, stats

    # ------------------------------------------------------------------ update

    def _policy_micro_step(self, exp: Experience, divisor: float) -> dict[str, float]:
        """Forward/backward of one micro-batch; the loss is its masked token sum / `divisor`
        (see `train`). Steps the optimizer when DeepSpeed reaches a boundary."""
        ppo = self.cfg.ppo
        self.policy.train()
        # (N, V) for the N response tokens: no (B, T, V) logits, nor a gradient of them.
        logits = response_logits(
            self.policy, self.policy.module, exp.input_ids, exp.attention_mask, exp.mask
        )
        logprobs = response_token_logprobs(logits, exp.input_ids, exp.mask)
        old = exp.old_logprobs if exp.old_logprobs is not None else logprobs.detach()
        loss, stats = algo.policy_loss(
            logprobs,
            old,
            exp.advantages,
            exp.mask,
            ppo.clip_eps,
            num_tokens=divisor,
            is_weights=exp.is_weights,
        )
        if ppo.kl.placement == "loss":
            loss = loss + self.kl_ctl.value * algo.kl_loss(
                logprobs, exp.ref_logprobs, exp.mask, ppo.kl.estimator, num_tokens=divisor
            )
        self.policy.backward(loss)
        self.policy.step()
        with torch.no_grad():
            per_token = response_token_entropy(logits.detach(), exp.mask)
            entropy = algo.masked_mean(per_token[:, 1:], exp.mask[:, 1:])
        extra = {}
        if exp.old_logprobs is None:
            extra = logprob_diff(logprobs.detach(), exp.sample_logprobs, exp.mask)
        return extra | {
            "train/policy_loss": float(loss.detach()) * divisor,  # summed; train() divides
            "train/clip_frac": float(stats.clip_fraction),
            "train/approx_kl": float(stats.approx_kl),
            "train/ratio_mean": float(stats.ratio_mean),
            "train/entropy": float(entropy),
        }

    def _critic_micro_step(self, exp: Experience, divisor: float) -> dict[str, float]:
        self.critic.train()
        values = token_values(score_positions(self.critic, exp.input_ids, exp.attention_mask))
        loss, stats = algo.value_loss(
            values.float(),
            exp.old_values,
            exp.returns,
            exp.mask,
            self.cfg.ppo.value_clip,
            num_tokens=divisor,
        )
        self.critic.backward(loss)
        self.critic.step()
        return {
            "train/value_loss": float(loss.detach()) * divisor,  # summed; train() divides
            "train/value_clip_frac": float(stats.clip_fraction),
        }

    def train(self, exp: Experience, *, seed: int) -> dict[str, float]:
        """`ppo.epochs` passes over this rank's rows, in shuffled minibatches.

        Each minibatch (`plan.minibatch` rows here, `ppo.minibatch_size` over all ranks) is
        one optimizer step made of `plan.grad_accum` micro-batches; the rows are a whole
        number of minibatches (`batch_plan`), so every row is used once per epoch and the
        last step of the iteration ends at an accumulation boundary.

        Loss reduction: token-mean over the whole minibatch on all ranks. Each micro-batch's
        masked sum is divided by N_mb / (grad_accum * world), N_mb the minibatch's response
        tokens summed over ranks; DeepSpeed divides by grad_accum and averages over ranks,
        so the step's gradient is that of (sum over the minibatch's tokens) / N_mb.

        Returns:
            Means over micro-batches of the per-micro stats; `train/policy_loss` and
            `train/value_loss` are this rank's token-means; `train/optimizer_steps` and
            `train/rows` count this iteration's steps and rows used (all epochs).
        """
        plan, world = self.plan, world_size()
        n = exp.input_ids.shape[0]
        if n != plan.rows:
            raise ValueError(f"expected {plan.rows} rows on this learner, got {n}")
        gen = torch.Generator().manual_seed(seed)
        steps_before = self.policy.global_steps
        sums: dict[str, float] = {}
        count = tokens_here = rows_used = 0
        for _ in range(self.cfg.ppo.epochs):
            order = torch.randperm(n, generator=gen).view(plan.steps, plan.minibatch)
            local = [float(exp.mask[rows].sum()) for rows in order]
            totals = all_reduce_sum(local)
            for rows, total in zip(order, totals, strict=True):
                divisor = max(total, 1.0) / (plan.grad_accum * world)
                for micro_rows in rows.split(plan.micro):
                    micro = exp.rows(micro_rows)
                    rows_used += micro_rows.numel()
                    stats = self._policy_micro_step(micro, divisor)
                    if self.critic is not None:
                        stats |= self._critic_micro_step(micro, divisor)
                    for k, v in stats.items():
                        merge = max if k.endswith("_max") else operator.add
                        sums[k] = merge(sums[k], v) if k in sums else v
                    count += 1
            tokens_here += sum(local)
        out = {k: v if k.endswith("_max") else v / count for k, v in sums.items()}
        for key in ("train/policy_loss", "train/value_loss"):
            if key in sums:
                out[key] = sums[key] / max(tokens_here, 1.0)
        out["train/optimizer_steps"] = float(self.policy.global_steps - steps_before)
        out["train/rows"] = float(rows_used)
        return out

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
