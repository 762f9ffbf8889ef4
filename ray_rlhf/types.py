"""Batches passed between roles. Tensors are on CPU; N = prompts x samples, T = tokens.

Layout shared by every batch: row i is prompt `i // n_samples`'s sample `i % n_samples`
(groups of `n_samples` consecutive rows share a prompt, as the group baselines expect).
Each row is prompt tokens then response tokens, right-padded to T.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class RolloutBatch:
    """What rollout workers return.

    Attributes:
        prompt_ids: (P,) dataset ids of the prompts, in order.
        prompts: (P,) prompt texts.
        responses: (N,) decoded response texts (special tokens skipped).
        input_ids: (N, T) long, prompt + response token ids, right padded.
        attention_mask: (N, T) bool, True on real tokens.
        response_mask: (N, T) bool, True on response tokens (EOS included).
        sample_logprobs: (N, T) float32, the sampler's logprob of each response token
            (0 where response_mask is False).
        finished: (N,) bool, True when the response ended with EOS.
        n_samples: samples per prompt.
        policy_version: weights version the samples came from.
        user_prompts: (P,) the prompts as the user wrote them (a plain row's text, a chat
            row's last user message), which rule rewards receive; None when `prompts` are
            those texts (no chat template rendered them).
    """

    prompt_ids: list[str]
    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    sample_logprobs: torch.Tensor
    finished: torch.Tensor
    n_samples: int
    policy_version: int = 0
    user_prompts: list[str] | None = None

    @property
    def num_samples(self) -> int:
        """N, the number of rows."""
        return self.input_ids.shape[0]

    def prompt_of_row(self, row: int) -> str:
        """Prompt text of row `row` (as the model read it)."""
        return self.prompts[row // self.n_samples]

    def user_prompt_of_row(self, row: int) -> str:
        """Prompt of row `row` as the user wrote it (`user_prompts`, else `prompts`)."""
        prompts = self.prompts if self.user_prompts is None else self.user_prompts
        return prompts[row // self.n_samples]

    def response_lengths(self) -> torch.Tensor:
        """(N,) response tokens per row."""
        return self.response_mask.sum(dim=1)


@dataclass(frozen=True)
class ScoredBatch:
    """A rollout batch with rewards, as reward scorers return it.

    Attributes:
        rollout: the scored samples.
        scores: (N,) sequence-level reward (after clipping; before any KL penalty).
        token_rewards: (N, T) float32 reward placed on response tokens (last response token
            for a sequence reward; segment / token-level rewards spread it out). Sums over T
            equal `scores` for the default placement.
        diagnostics: per-row extras keyed by namespaced name (e.g. `reward/raw`), each (N,).
    """

    rollout: RolloutBatch
    scores: torch.Tensor
    token_rewards: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    def with_rollout(self, rollout: RolloutBatch) -> ScoredBatch:
        """Same rewards on another rollout object (e.g. after moving tensors)."""
        return replace(self, rollout=rollout)


def select_rollout_groups(batch: RolloutBatch, first: int, last: int) -> RolloutBatch:
    """Prompt groups `first..last-1` of a rollout batch (all their samples), same layout."""
    lo, hi = first * batch.n_samples, last * batch.n_samples
    return replace(
        batch,
        prompt_ids=batch.prompt_ids[first:last],
        prompts=batch.prompts[first:last],
        user_prompts=None if batch.user_prompts is None else batch.user_prompts[first:last],
        responses=batch.responses[lo:hi],
        input_ids=batch.input_ids[lo:hi],
        attention_mask=batch.attention_mask[lo:hi],
        response_mask=batch.response_mask[lo:hi],
        sample_logprobs=batch.sample_logprobs[lo:hi],
        finished=batch.finished[lo:hi],
    )


def select_groups(scored: ScoredBatch, first: int, last: int) -> ScoredBatch:
    """Prompt groups `first..last-1` of a scored batch (all their samples and rewards)."""
    n = scored.rollout.n_samples
    lo, hi = first * n, last * n
    return ScoredBatch(
        rollout=select_rollout_groups(scored.rollout, first, last),
        scores=scored.scores[lo:hi],
        token_rewards=scored.token_rewards[lo:hi],
        diagnostics={k: v[lo:hi] for k, v in scored.diagnostics.items()},
    )


def group_range(num_groups: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous share of `num_groups` prompt groups for `rank` of `world` (sizes differ by
    at most one)."""
    base, extra = divmod(num_groups, world)
    first = rank * base + min(rank, extra)
    return first, first + base + (1 if rank < extra else 0)
