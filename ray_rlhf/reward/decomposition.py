"""Prompt-free / prompt-related diagnostics in the reward actors (docs/algorithms.md §1).

Mao et al. 2025, "Information-Theoretic Reward Decomposition for Generalizable RLHF"
(arXiv 2504.06020): r(x, y) = r1(x, y) + r2(y). For a rollout batch the reward actor scores
every response also under M other prompts of the batch (the same M for all samples of a
prompt) and reports, per row i:

- `reward/prompt_free_score`: mean_m r(x'_m, y_i), the reward y_i gets whatever the prompt;
- `reward/prompt_free_gap`: dr2 of the pair (y_i, y_j), y_j the next sample of the same
  prompt (cyclic), from `cross_prompt_gaps` over the M prompts;
- `reward/prompt_related_gap`: dr1 = r(x, y_i) - r(x, y_j) - dr2;
- `reward/prompt_free_share`: |dr2| / (|dr1| + |dr2|), how much of that preference the
  response alone decides.

A diagnostic only: the rewards PPO trains on are unchanged. It costs M extra reward
forwards per row. Rows of a shard with a single prompt (no other prompt to borrow) or a
single sample per prompt (no pair) get zeros and `reward/prompt_free_valid` = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ray_rlhf.algo.decompose import (
    cross_prompt_gaps,
    in_batch_alternative_indices,
    prompt_related_gap,
)
from ray_rlhf.reward.scorer import RewardContext, Rewards

KEYS = (
    "reward/prompt_free_score",
    "reward/prompt_free_gap",
    "reward/prompt_related_gap",
    "reward/prompt_free_share",
    "reward/prompt_free_valid",
)


@dataclass(frozen=True)
class PromptFreeDiagnostics:
    """`RewardTransform` adding the per-row decomposition diagnostics (module docstring).

    Attributes:
        num_prompts: M, other in-batch prompts each response is scored under.
        seed: Seeds the draw of the other prompts (mixed with the shard's row offset).
    """

    num_prompts: int = 4
    seed: int = 0
    name: str = "prompt_free"

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        """Adds the `KEYS` diagnostics, each (N,); scores and token rewards unchanged."""
        batch = ctx.batch
        n, groups = batch.n_samples, len(batch.prompts)
        rows = batch.num_samples
        if groups < 2 or n < 2:
            zeros = torch.zeros(rows)
            return replace(rewards, diagnostics=rewards.diagnostics | dict.fromkeys(KEYS, zeros))
        generator = torch.Generator().manual_seed(self.seed * 7919 + ctx.row_offset)
        alt = in_batch_alternative_indices(groups, self.num_prompts, generator)  # (G, M)
        row_alt = alt.repeat_interleave(n, dim=0)  # (N, M): a row borrows its group's prompts
        borrowed = row_alt.reshape(-1).tolist()
        prompts = [batch.prompts[g] for g in borrowed]
        users = None if batch.user_prompts is None else [batch.user_prompts[g] for g in borrowed]
        responses = [r for r in batch.responses for _ in range(self.num_prompts)]
        finished = [bool(f) for f in batch.finished for _ in range(self.num_prompts)]
        cross = ctx.source.score_texts(prompts, responses, finished, users).float()
        cross = cross.view(rows, self.num_prompts)  # r(x'_m, y_i)
        partner = torch.arange(rows)
        partner = partner - partner % n + (partner % n + 1) % n  # next sample, same prompt
        raw = rewards.diagnostics["reward/raw"].float()  # (N,) own-prompt reward
        dr2 = cross_prompt_gaps(cross - cross[partner]).prompt_free_gap  # (N,)
        dr1 = prompt_related_gap(raw - raw[partner], dr2)
        share = dr2.abs() / (dr1.abs() + dr2.abs()).clamp_min(1e-8)
        values = (cross.mean(dim=1), dr2, dr1, share, torch.ones(rows))
        return replace(
            rewards, diagnostics=rewards.diagnostics | dict(zip(KEYS, values, strict=True))
        )
