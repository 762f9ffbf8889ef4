"""RewardScorer: per-token rewards for a `RolloutBatch`, from a rule or a reward model.

One `score` call is a short pipeline (each stage adds its diagnostics, all (N,)):

    raw scores (N,)      rule per row, or the RM's value at each row's last real token
      -> finite check    a NaN / inf names the row, its prompt id and its response
      -> transforms      `RewardTransform`s in order: segment rewards, contrastive baseline
                         subtraction, prompt-free / prompt-related split (docs/algorithms.md)
      -> clamp           to [-clip, clip]                      (`reward/clipped`)
      -> placement       score on the last response token, unless a transform placed
                         token rewards itself (segment / token-level rewards)

The class is plain Python (no Ray); `ray_rlhf.distributed.reward_pool` runs copies of it
as actors. The reward model and its tokenizer are loaded once, in `__init__`, so a bad
rule or model directory fails before any rollout is scored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ray_rlhf.algo.rewards import place_last_token_rewards
from ray_rlhf.config import RewardConfig
from ray_rlhf.errors import RewardError
from ray_rlhf.reward.rules import RuleRowError, RuleSource, rows_prompts
from ray_rlhf.types import RolloutBatch, ScoredBatch

_ROWS_PER_FORWARD = 64
"""Reward-model rows per forward pass (bounds activation memory on long batches)."""


@dataclass(frozen=True)
class Rewards:
    """Rewards of a batch as they move through the pipeline.

    Attributes:
        scores: (N,) float32 sequence rewards.
        token_rewards: (N, T) float32 per-token rewards when a transform placed them
            (segment / token-level rewards); None means "last response token" placement.
        diagnostics: per-row extras keyed by namespaced name (`reward/raw`), each (N,).
    """

    scores: torch.Tensor
    token_rewards: torch.Tensor | None = None
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardContext:
    """What a transform may read besides the rewards themselves.

    Attributes:
        batch: The rollout batch being scored (N rows, T tokens).
        values: (N, T) per-position reward-model values aligned with `batch.input_ids`
            (model kind, same tokenizer as the policy); None for rules or re-tokenized rows.
        source: The raw scorer, to score other (prompt, response) pairs, e.g. a response
            under other in-batch prompts for the prompt-free estimate (docs/algorithms.md §1).
        row_offset: Index of row 0 in the full batch (error messages name global rows).
    """

    batch: RolloutBatch
    values: torch.Tensor | None
    source: ScoreSource
    row_offset: int = 0


class ScoreSource(Protocol):
    """A raw scorer: a rule or a reward model."""

    def score_batch(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (N,) float64 raw scores and (N, T) per-position values or None."""
        ...

    def score_texts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        user_prompts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Returns (M,) float64 raw scores of M (prompt, response) pairs. `prompts` are
        what the model read; `user_prompts` (for rules) as the user wrote them, or None
        when equal (`RolloutBatch.user_prompts`)."""
        ...


class RewardTransform(Protocol):
    """A reward stage applied after raw scoring and before the clamp.

    Implementations (later): segment rewards with the location-aware normalizer (§5),
    contrastive rewards = score - offline baseline of the same prompt id (§2), and the
    prompt-free / prompt-related decomposition diagnostics (§1). A transform returns new
    `Rewards` (it does not mutate its input) and namespaces its diagnostics
    (`reward/<name>_...`); everything it returns must be finite, which the scorer checks.
    """

    name: str
    """Short name, used in diagnostics keys and error messages."""

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        """Maps rewards to rewards; see the class docstring."""
        ...


def describe_row(batch: RolloutBatch, row: int, row_offset: int = 0) -> str:
    """`row 3 (prompt id 'p1', response '1 2 !')`, for error messages; `row` is local."""
    prompt_id = batch.prompt_ids[row // batch.n_samples]
    return f"row {row + row_offset} (prompt id {prompt_id!r}, response {batch.responses[row]!r})"


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Runs the block with `n` intra-op threads, then restores the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ModelSource:
    """Raw scores from a "scalar" reward model: its value at each row's last real token.

    Token ids: when the policy's tokenizer is known (`policy_dir`) and its vocabulary
    (token -> id map) differs from the RM directory's, every row's prompt + response text
    is re-tokenized with the RM tokenizer (`data.tokenize.encode_prompt_response`; EOS
    appended only to finished rows, mirroring the policy's ids). Otherwise the batch's own
    ids are scored, which is the usual case (an RM trained from the SFT policy shares its
    tokenizer); ids outside the RM's embedding table are then an error.
    """

    def __init__(
        self,
        model_path: str,
        *,
        policy_dir: str | None,
        trust_remote_code: bool,
        threads: int,
    ) -> None:
        from ray_rlhf.models.builders import load_reward_model, load_tokenizer, reward_head

        self.model_path = model_path
        self.threads = threads
        # A per-position (segment) RM scores its last token here too; `SegmentRewards`
        # then replaces that score with its segment rewards.
        self.model = load_reward_model(
            model_path, head=reward_head(model_path), trust_remote_code=trust_remote_code
        ).eval()
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.retokenize = policy_dir is not None and (
            load_tokenizer(policy_dir, trust_remote_code=trust_remote_code).get_vocab()
            != self.tokenizer.get_vocab()
        )

    def score_batch(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) float64 scores and, unless re-tokenized, (N, T) values on the batch's ids."""
        if self.retokenize:
            finished = batch.finished.tolist()
            return self.score_texts(rows_prompts(batch), batch.responses, finished), None
        self._check_ids(batch.input_ids)
        return self._forward(batch.input_ids, batch.attention_mask)

    def score_texts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        user_prompts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """(M,) float64 scores of (prompt, response) texts tokenized with the RM tokenizer.

        Args:
            prompts: (M,) prompt texts as the policy read them.
            responses: (M,) response texts, without EOS.
            finished: (M,) whether each response ended with EOS (then EOS is appended).
            user_prompts: Unused: a reward model reads what the policy read.
        """
        from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch

        examples = []
        for prompt, response, done in zip(prompts, responses, finished, strict=True):
            ex = encode_prompt_response(self.tokenizer, prompt, response)  # ends with EOS
            if not done:
                ex = ex._replace(input_ids=ex.input_ids[:-1], response_mask=ex.response_mask[:-1])
            examples.append(ex)
        pad_id = self.tokenizer.pad_token_id
        padded = pad_batch(examples, self.tokenizer.eos_token_id if pad_id is None else pad_id)
        return self._forward(padded["input_ids"], padded["attention_mask"])[0]

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        """Batch ids must index the RM's embedding table."""
        size = self.model.get_input_embeddings().num_embeddings
        top = int(input_ids.max()) if input_ids.numel() else 0
        if top >= size:
            raise ValueError(
                f"reward model {self.model_path}: batch token id {top} is outside its "
                f"vocabulary of {size}; pass the policy dir so the scorer re-tokenizes"
            )

    @torch.no_grad()
    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position values (N, T) and last-real-token scores (N,), both float64."""
        from ray_rlhf.models.builders import last_token_values, score_positions

        chunks = []
        with _torch_threads(self.threads):
            for lo in range(0, input_ids.shape[0], _ROWS_PER_FORWARD):
                ids = input_ids[lo : lo + _ROWS_PER_FORWARD]
                mask = attention_mask[lo : lo + _ROWS_PER_FORWARD].long()
                chunks.append(score_positions(self.model, ids, mask))  # (B, T)
        values = torch.cat(chunks).double()  # (N, T)
        return last_token_values(values, attention_mask), values


class RewardScorer:
    """Scores rollout batches: raw scores, transforms, clamp, token placement.

    Args:
        cfg: Reward config: `kind` rule (`cfg.rule`) or model (`cfg.model_path`), `clip`.
        trust_remote_code: Allow custom code from the reward-model directory.
        threads: Torch intra-op threads for reward-model forwards.
        policy_dir: The policy's model directory; lets the model kind detect a tokenizer
            that differs from the RM's and re-tokenize (see `ModelSource`).
        transforms: Reward stages applied in order after raw scoring (`RewardTransform`).

    Raises:
        ValueError: If the rule cannot be loaded or the model directory is invalid.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        *,
        trust_remote_code: bool = False,
        threads: int = 1,
        policy_dir: str | None = None,
        transforms: Sequence[RewardTransform] = (),
    ) -> None:
        self.cfg = cfg
        self.transforms = tuple(transforms)
        self.source: RuleSource | ModelSource
        if cfg.kind == "rule":
            self.source = RuleSource(cfg.rule)
        else:
            assert cfg.model_path is not None  # RewardConfig checks this
            self.source = ModelSource(
                cfg.model_path,
                policy_dir=policy_dir,
                trust_remote_code=trust_remote_code,
                threads=threads,
            )

    def describe(self) -> dict[str, Any]:
        """What this scorer computes (for logs; also a cheap readiness probe for actors,
        and its process id tells a pool whether Ray restarted it)."""
        return {
            "pid": os.getpid(),
            "kind": self.cfg.kind,
            "source": self.cfg.rule if self.cfg.kind == "rule" else self.cfg.model_path,
            "retokenize": isinstance(self.source, ModelSource) and self.source.retokenize,
            "transforms": [t.name for t in self.transforms],
            "clip": self.cfg.clip,
        }

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        """Scores a batch.

        Args:
            batch: N rows of prompt + response token ids and texts.

        Returns:
            `ScoredBatch` with scores (N,) float32 clamped to [-clip, clip], token_rewards
            (N, T) float32, and diagnostics `reward/raw` (N,) (before transforms and clamp)
            and `reward/clipped` (N,) (1.0 where the clamp changed the row), plus any keys
            the transforms add.

        Raises:
            RewardError: Naming the row, its prompt id and response, if a rule fails on it
                or a score is not finite.
        """
        rewards = self.compute(batch)
        assert rewards.token_rewards is not None
        return ScoredBatch(batch, rewards.scores, rewards.token_rewards, rewards.diagnostics)

    def compute(self, batch: RolloutBatch, *, row_offset: int = 0) -> Rewards:
        """`score` without the rollout: final `Rewards` with token rewards placed.

        This is what reward actors return, so the rollout is not shipped back.

        Args:
            batch: N rows (a shard of a larger batch when `row_offset` > 0).
            row_offset: Index of row 0 in the full batch, for error messages.
        """
        try:
            raw, values = self.source.score_batch(batch)
        except RuleRowError as err:
            raise RewardError(f"{describe_row(batch, err.row, row_offset)}: {err}") from err
        _check_finite(raw, batch, "raw score", row_offset)
        rewards = Rewards(raw.float(), None, {"reward/raw": raw.float()})
        ctx = RewardContext(batch, values, self.source, row_offset)
        for transform in self.transforms:
            rewards = transform.apply(ctx, rewards)
            what = f"rewards after transform {transform.name!r}"
            _check_finite(rewards.scores, batch, what, row_offset)
            if rewards.token_rewards is not None:
                _check_finite(rewards.token_rewards, batch, what, row_offset)
        rewards = clamp_rewards(rewards, self.cfg.clip)
        if rewards.token_rewards is None:
            placed = place_last_token_rewards(rewards.scores, batch.response_mask)  # (N, T)
            rewards = replace(rewards, token_rewards=placed)
        return rewards


def _check_finite(values: torch.Tensor, batch: RolloutBatch, what: str, row_offset: int) -> None:
    """Raises a RewardError naming the first row of `values` ((N,) or (N, T)) holding a NaN
    or an infinity."""
    bad = ~torch.isfinite(values).reshape(len(values), -1).all(dim=1)  # (N,)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise RewardError(
            f"{what} of {describe_row(batch, row, row_offset)} is not finite "
            f"({values[row].tolist()}); {int(bad.sum())} such row(s) in the batch"
        )


def clamp_rewards(rewards: Rewards, clip: float) -> Rewards:
    """Clamps scores (N,) and any placed token rewards (N, T) to [-clip, clip].

    Adds `reward/clipped` (N,): 1.0 where the clamp changed the row's score or any of its
    token rewards.
    """
    scores = rewards.scores.clamp(-clip, clip)
    clipped = scores != rewards.scores  # (N,)
    token_rewards = rewards.token_rewards
    if token_rewards is not None:
        token_rewards = token_rewards.clamp(-clip, clip)
        clipped |= (token_rewards != rewards.token_rewards).any(dim=1)
    diagnostics = rewards.diagnostics | {"reward/clipped": clipped.float()}
    return Rewards(scores, token_rewards, diagnostics)
