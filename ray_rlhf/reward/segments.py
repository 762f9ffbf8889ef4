"""Segment-level rewards around the pure math of `ray_rlhf.algo.segments` (docs/algorithms.md §5).

Yin et al. 2025, arXiv 2501.02790. Three users share this module so they segment alike:

- RM training (`loops/rm.py`): `add_pair_segment_ends` marks the segment ends of every
  chosen / rejected row with the reference (= the policy the RM starts from) model.
- The normalizer job (`loops/segment_normalizer.py`) records the threshold, the reference
  dir, its tokenizer's fingerprint and the fitted μ(p), σ(p) in the RM's `ray_rlhf.json`.
- PPO reward actors: `SegmentRewards`, a `RewardTransform` that segments each rollout with
  the same reference model, normalizes the RM's segment rewards and spreads them per token.

The reference model is loaded lazily inside the transform (once per actor), so the
transform object itself stays small and picklable.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.algo.masking import entropy_from_logits
from ray_rlhf.algo.segments import (
    LocationNormalizer,
    densify_segment_rewards,
    normalize_segment_rewards,
    segment_ends,
    segment_lengths,
    segment_positions,
)
from ray_rlhf.config import ConfigError, RLHFConfig
from ray_rlhf.config_checks import check_segment_reward
from ray_rlhf.models.checkpoint import METADATA_FILE, ModelDirError, load_json
from ray_rlhf.reward.scorer import RewardContext, Rewards
from ray_rlhf.typed_config import check

ROWS_PER_FORWARD = 64
"""Rows per reference-model forward (bounds the (B, T, V) logits memory)."""

METADATA_KEY = "segment"
"""Key of the segmentation record in a reward model's `ray_rlhf.json`."""

POSITION_BUCKETS = ("early", "middle", "late")
"""Thirds of the normalized segment position p = k / K, for rewards-by-position metrics."""


def segmentation_threshold(cfg: RLHFConfig) -> float:
    """The entropy threshold c the config's `segment.reward_granularity` implies.

    "token": 0 (every token a segment); "segment": `segment.threshold`; "bandit": inf.
    """
    return {"token": 0.0, "segment": cfg.segment.threshold, "bandit": math.inf}[
        cfg.segment.reward_granularity
    ]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's token -> id map and EOS id (same ids, same segmentation)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{vocab}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


@torch.no_grad()
def token_entropies(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, threads: int | None = None
) -> torch.Tensor:
    """Next-token entropy of a causal LM at every position: ONE forward per row chunk.

    Args:
        model: An HF causal LM (the reference policy), in eval mode.
        input_ids: (N, T) token ids, left or right padded.
        attention_mask: (N, T), True / 1 on real tokens.
        threads: Torch intra-op threads for the forwards (None: leave as is).

    Returns:
        (N, T) float32 entropies in nats; position t is the entropy of the token after t.
        Values on padding are meaningless.
    """
    from ray_rlhf.models.builders import position_ids_from_mask

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        chunks = []
        for lo in range(0, input_ids.shape[0], ROWS_PER_FORWARD):
            ids = input_ids[lo : lo + ROWS_PER_FORWARD]
            mask = attention_mask[lo : lo + ROWS_PER_FORWARD].long()
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                use_cache=False,
            ).logits  # (B, T, V)
            chunks.append(entropy_from_logits(logits.float()))  # (B, T)
    finally:
        torch.set_num_threads(before)
    return torch.cat(chunks)


def load_reference(reference_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """The frozen reference policy used for segmentation (float32, eval, no grad)."""
    from ray_rlhf.models.builders import load_policy

    model = load_policy(reference_dir, trust_remote_code=trust_remote_code).eval()
    model.requires_grad_(False)
    return model


def add_pair_segment_ends(
    pairs: dict[str, torch.Tensor],
    reference_dir: str | Path,
    threshold: float,
    *,
    trust_remote_code: bool = False,
) -> dict[str, torch.Tensor]:
    """Adds `chosen_segment_ends` / `rejected_segment_ends` (P, T) bool to a pair batch.

    Every pair response ends with EOS (`tokenize_pairs`), so each row is "finished".

    Args:
        pairs: `tokenize_pairs` output: chosen_/rejected_ input_ids, attention_mask,
            response_mask, each (P, T).
        reference_dir: The reference (SFT) policy that segments.
        threshold: Entropy threshold c.
        trust_remote_code: Allow custom model code from the directory.

    Returns:
        A new dict with the two keys added.
    """
    model = load_reference(reference_dir, trust_remote_code)
    out = dict(pairs)
    for side in ("chosen", "rejected"):
        ids, attn = pairs[f"{side}_input_ids"], pairs[f"{side}_attention_mask"]
        entropy = token_entropies(model, ids, attn)
        finished = torch.ones(ids.shape[0], dtype=torch.bool)
        out[f"{side}_segment_ends"] = segment_ends(
            entropy, pairs[f"{side}_response_mask"], finished, threshold
        )
    return out


def read_segment_metadata(rm_dir: str | Path) -> dict[str, Any]:
    """The RM's segmentation record.

    Raises:
        ConfigError: Naming `reward.model_path` and what to run, when the RM's
            `ray_rlhf.json` records no per-position head or no fitted normalizer.
    """
    path = Path(rm_dir) / METADATA_FILE
    meta = load_json(path) if path.is_file() else {}
    record = meta.get(METADATA_KEY)
    check(
        meta.get("head") == "per_position" and record is not None and "normalizer" in record,
        "reward.model_path",
        f"reward model {rm_dir} has no fitted segment normalizer in {METADATA_FILE} (head "
        f"{meta.get('head')!r}); train it with rm.head=per_position, or run "
        f"`ray-rlhf fit-segment-normalizer reward.model_path={rm_dir}`",
    )
    return record


@dataclass
class SegmentRewards:
    """`RewardTransform`: dense per-token segment rewards (Yin et al. 2025; docs/algorithms.md §5).

    Per row: segment the response with the reference model's entropies (threshold c), take
    the RM value at each segment end, normalize it with the RM's μ(p), σ(p), and spread it
    over the segment's tokens. `scores` becomes the row's return before KL (the sum of its
    normalized segment rewards). Diagnostics (N,): `reward/segment_raw_mean`,
    `reward/segments`, `reward/segment_mean_length`, and per position third
    `reward/segment_<bucket>_sum` / `_count` (see `segment_batch_metrics`).

    Attributes:
        reference_dir: The reference (SFT) policy the RM was segmented with.
        threshold: Entropy threshold c (must be the RM's).
        normalizer: The RM's fitted μ(p), σ(p).
        min_std: Floor of σ(p).
        threads: Torch threads of the reference forward.
        trust_remote_code: Allow custom model code from `reference_dir`.
    """

    reference_dir: str
    threshold: float
    normalizer: LocationNormalizer
    min_std: float
    threads: int = 1
    trust_remote_code: bool = False
    name: str = "segment"
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_model"} | {"_model": None}

    def ends(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        finished: torch.Tensor,
    ) -> torch.Tensor:
        """(N, T) bool segment ends of rows of prompt + response ids (see `segment_ends`)."""
        if self._model is None:
            self._model = load_reference(self.reference_dir, self.trust_remote_code)
        entropy = token_entropies(self._model, input_ids, attention_mask, self.threads)
        return segment_ends(entropy, response_mask, finished, self.threshold)

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        """Replaces the last-token scores by dense segment rewards; see the class docstring."""
        if ctx.values is None:
            raise ValueError(
                "segment rewards need the reward model's per-position values on the policy's "
                "token ids; the RM and the policy must share a tokenizer"
            )
        batch = ctx.batch
        ends = self.ends(batch.input_ids, batch.attention_mask, batch.response_mask, batch.finished)
        values = ctx.values.float()  # (N, T)
        normalized = normalize_segment_rewards(values, ends, self.normalizer, self.min_std)
        dense = densify_segment_rewards(normalized, ends, batch.response_mask)  # (N, T)
        count = ends.sum(dim=1).float()  # (N,)
        diagnostics = {
            "reward/segment_raw_mean": (values * ends).sum(dim=1) / count.clamp(min=1),
            "reward/segments": count,
            "reward/segment_mean_length": segment_lengths(ends, batch.response_mask),
        }
        p = segment_positions(ends)
        for i, bucket in enumerate(POSITION_BUCKETS):
            inside = ends & (p > i / 3) & (p <= (i + 1) / 3)
            diagnostics[f"reward/segment_{bucket}_sum"] = (normalized * inside).sum(dim=1)
            diagnostics[f"reward/segment_{bucket}_count"] = inside.sum(dim=1).float()
        return replace(
            rewards,
            scores=normalized.sum(dim=1),
            token_rewards=dense,
            diagnostics=rewards.diagnostics | diagnostics,
        )


def segment_batch_metrics(diagnostics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Batch metrics from `SegmentRewards` diagnostics (empty when there are none).

    Returns:
        `reward/segment_mean_length` (tokens per segment over all segments),
        `reward/segments_per_response`, `reward/segment_raw_mean`, and
        `reward/segment_by_position/<bucket>` (mean normalized reward of the segments whose
        p = k / K falls in that third).
    """
    if "reward/segments" not in diagnostics:
        return {}
    count = diagnostics["reward/segments"]
    tokens = (diagnostics["reward/segment_mean_length"] * count).sum()
    out = {
        "reward/segment_mean_length": float(tokens / count.sum().clamp(min=1)),
        "reward/segments_per_response": float(count.mean()),
        "reward/segment_raw_mean": float(diagnostics["reward/segment_raw_mean"].mean()),
    }
    for bucket in POSITION_BUCKETS:
        n = diagnostics[f"reward/segment_{bucket}_count"].sum()
        if n > 0:
            total = diagnostics[f"reward/segment_{bucket}_sum"].sum()
            out[f"reward/segment_by_position/{bucket}"] = float(total / n)
    return out


def check_segment_reward_model(cfg: RLHFConfig) -> dict[str, Any] | None:
    """Checks `segment.*` against PPO's reward and its reward model's metadata
    (`config.json`, `ray_rlhf.json`; no weights are read); returns the RM's segmentation
    record, or None for bandit rewards. `preflight` runs it before Ray starts.

    Raises:
        ConfigError: Naming the key: segment / token rewards from a rule or with a
            sequence-level advantage (`check_segment_reward`), from a scalar reward model,
            from one without a fitted normalizer, with another threshold than the RM's, or
            with a reference whose tokenizer changed or that is not `model.path`; or bandit
            rewards from a per-position reward model.
        ModelDirError: `reward.model_path` is not a valid model directory.
    """
    from ray_rlhf.models.builders import reward_head

    check_segment_reward(cfg)  # the config alone: rule rewards, sequence-level advantages
    granularity, path = cfg.segment.reward_granularity, cfg.reward.model_path
    if cfg.reward.kind != "model" or path is None:
        return None  # bandit with a rule (check_segment_reward refused the rest)
    head = reward_head(path)
    if granularity == "bandit":
        check(
            head == "scalar",
            "segment.reward_granularity",
            f"'bandit' scores a response by the reward model's value at its last token, but "
            f"reward.model_path {path} is a per_position reward model (trained for segment "
            "rewards); set segment.reward_granularity to 'segment' or 'token' as it was "
            "trained, or use a scalar reward model",
        )
        return None
    check(
        head == "per_position",
        "segment.reward_granularity",
        f"{granularity!r} needs a reward model with a value at every position, but "
        f"reward.model_path {path} is a scalar reward model (one score per response); set "
        "segment.reward_granularity=bandit, or train a per-position reward model (`ray-rlhf "
        f"train-rm rm.head=per_position segment.reward_granularity={granularity}`)",
    )
    record = read_segment_metadata(path)
    _check_segmentation(cfg, path, record)
    return record


def _check_segmentation(cfg: RLHFConfig, rm_dir: str, record: dict[str, Any]) -> None:
    """PPO segments as the reward model was trained and normalized: the same threshold c,
    the same reference model (`model.path`) and reference tokenizer."""
    from ray_rlhf.models.builders import load_tokenizer

    granularity, threshold = cfg.segment.reward_granularity, segmentation_threshold(cfg)
    check(
        record["threshold"] == threshold,
        "segment.threshold" if granularity == "segment" else "segment.reward_granularity",
        f"reward model {rm_dir} was segmented with threshold c={record['threshold']}, but "
        f"segment.reward_granularity={granularity!r} / segment.threshold give c={threshold}; "
        f"segmentation must match between RM training and PPO: {_matching_segmentation(record)}",
    )
    reference = record["reference_dir"]
    try:
        tokenizer = load_tokenizer(reference, trust_remote_code=cfg.model.trust_remote_code)
    except ModelDirError as error:
        raise ConfigError(
            f"reward.model_path: reward model {rm_dir} was segmented with reference model "
            f"{reference} (its {METADATA_FILE} says so), which is unusable now: {error}"
        ) from error
    check(
        tokenizer_fingerprint(tokenizer) == record["tokenizer"],
        "reward.model_path",
        f"the tokenizer of reference model {reference} differs from the one reward model "
        f"{rm_dir} was segmented with; restore that model as it was, or train the reward "
        "model again from the current one",
    )
    check(
        cfg.model.path is None or Path(cfg.model.path).resolve() == Path(reference),
        "model.path",
        f"{cfg.model.path} is not the reference {reference} reward model {rm_dir} was "
        "segmented with; set model.path to it (PPO must start from the policy the segments "
        "were cut with)",
    )


def _matching_segmentation(record: dict[str, Any]) -> str:
    """The `segment.*` settings that give the threshold a reward model was segmented with."""
    if record["threshold"] == 0:
        return "set segment.reward_granularity=token"
    return f"set segment.reward_granularity=segment and segment.threshold={record['threshold']}"


def build_segment_transform(cfg: RLHFConfig, threads: int = 1) -> SegmentRewards | None:
    """The PPO segment transform `cfg` asks for (None for bandit rewards).

    Raises:
        ConfigError: If `segment.*` does not fit the reward (`check_segment_reward_model`,
            which `preflight` ran before Ray started).
    """
    record = check_segment_reward_model(cfg)
    if record is None:
        return None
    return SegmentRewards(
        reference_dir=record["reference_dir"],
        threshold=segmentation_threshold(cfg),
        normalizer=LocationNormalizer(**record["normalizer"]),
        min_std=cfg.segment.min_std,
        threads=threads,
        trust_remote_code=cfg.model.trust_remote_code,
    )
