"""Segment-reward diagnostics of a policy: sampled responses with their segment boundaries and
rewards marked, rewards by position, and (toy world) the correlation of the learned segment
rewards with the ground-truth per-step correctness (docs/algorithms.md §5).

Runs in-process (no Ray): samples with HF `generate` from the policy, scores with the same
`RewardScorer` + `SegmentRewards` pipeline the reward actors run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.algo.segments import (
    normalize_segment_rewards,
    segment_lengths,
    segment_positions,
)
from ray_rlhf.config import RLHFConfig
from ray_rlhf.reward.segments import SegmentRewards, build_segment_transform
from ray_rlhf.types import RolloutBatch


@dataclass(frozen=True)
class SegmentSample:
    """Segmented responses of a policy.

    Attributes:
        batch: The sampled rows (N, T).
        values: (N, T) RM values.
        ends: (N, T) bool segment ends.
        normalized: (N, T) normalized segment rewards at the ends.
    """

    batch: RolloutBatch
    values: torch.Tensor
    ends: torch.Tensor
    normalized: torch.Tensor


@torch.no_grad()
def sample_rollouts(
    policy_dir: str | Path, prompts: list[str], n_samples: int, max_tokens: int, seed: int
) -> RolloutBatch:
    """Samples `n_samples` responses per prompt at temperature 1 (right-padded rows)."""
    from ray_rlhf.models.builders import load_policy, load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    model = load_policy(policy_dir).eval()
    torch.manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows: list[tuple[list[int], list[int], bool]] = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]] * n_samples)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            max_new_tokens=max_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, ids.shape[1] :]
        for gen in out.tolist():
            done = eos in gen
            rows.append((ids[0].tolist(), gen[: gen.index(eos) + 1] if done else gen, done))
    width = max(len(p) + len(r) for p, r, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.bool)
    response = torch.zeros_like(attention)
    for i, (p, r, _) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = True
        response[i, len(p) : len(p) + len(r)] = True
    texts = [tokenizer.decode(r, skip_special_tokens=True) for _, r, _ in rows]
    return RolloutBatch(
        prompt_ids=[f"p{i}" for i in range(len(prompts))],
        prompts=list(prompts),
        responses=texts,
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=response,
        sample_logprobs=torch.zeros(input_ids.shape),
        finished=torch.tensor([d for *_, d in rows]),
        n_samples=n_samples,
    )


def segment_sample(cfg: RLHFConfig, batch: RolloutBatch) -> SegmentSample:
    """Scores and segments `batch` with the config's RM and segment transform."""
    from ray_rlhf.reward.scorer import ModelSource

    transform = build_segment_transform(cfg)
    if not isinstance(transform, SegmentRewards):
        raise ValueError("segment diagnostics need segment.reward_granularity segment or token")
    assert cfg.reward.model_path is not None  # build_segment_transform checked it
    source = ModelSource(cfg.reward.model_path, policy_dir=None, trust_remote_code=False, threads=1)
    _, values = source.score_batch(batch)
    assert values is not None
    ends = transform.ends(
        batch.input_ids, batch.attention_mask, batch.response_mask, batch.finished
    )
    normalized = normalize_segment_rewards(
        values.float(), ends, transform.normalizer, transform.min_std
    )
    return SegmentSample(batch, values.float(), ends, normalized)


def render_row(sample: SegmentSample, row: int, tokenizer: Any) -> str:
    """`1 2 [+0.52] | 3 ! [-0.10] | <eos>`: response tokens, each segment closed by its
    normalized reward and a bar."""
    batch = sample.batch
    mask = batch.response_mask[row]
    ids = batch.input_ids[row][mask].tolist()
    ends = sample.ends[row][mask].tolist()
    rewards = sample.normalized[row][mask].tolist()
    parts = []
    for token, end, reward in zip(ids, ends, rewards, strict=True):
        word = (
            "<eos>" if token == tokenizer.eos_token_id else tokenizer.convert_ids_to_tokens(token)
        )
        parts.append(word)
        if end:
            parts.append(f"[{reward:+.2f}] |")
    return " ".join(parts)


def step_correlation(sample: SegmentSample) -> dict[str, float]:
    """Spearman rank correlation between each segment's raw RM reward and the toy world's
    mean ground-truth step correctness (`step_rewards`) over the segment's steps.

    Assumes one token per response word (the toy world's word tokenizer); segments holding
    no step (the style token alone, EOS) are left out.
    """
    from scipy.stats import spearmanr

    from ray_rlhf.data.toyworld import step_rewards

    batch = sample.batch
    learned, truth = [], []
    for row in range(batch.num_samples):
        mask = batch.response_mask[row]
        steps = step_rewards(batch.prompt_of_row(row), batch.responses[row])
        ends = sample.ends[row][mask].tolist()
        values = sample.values[row][mask].tolist()
        start = 0
        for i, end in enumerate(ends):
            if not end:
                continue
            inside = steps[start : min(i + 1, len(steps))]
            if inside:
                learned.append(values[i])
                truth.append(sum(inside) / len(inside))
            start = i + 1
    rho = spearmanr(learned, truth).statistic if len(set(truth)) > 1 else float("nan")
    return {"segment/step_spearman": float(rho), "segment/step_pairs": float(len(learned))}


def position_table(sample: SegmentSample, bins: int = 4) -> list[tuple[str, int, float, float]]:
    """(p range, segments, mean raw reward, mean normalized reward) per bin of p = k / K."""
    p = segment_positions(sample.ends)[sample.ends]
    raw, norm = sample.values[sample.ends], sample.normalized[sample.ends]
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p > lo) & (p <= hi)
        n = int(inside.sum())
        if n:
            out.append(
                (f"({lo:.2f}, {hi:.2f}]", n, float(raw[inside].mean()), float(norm[inside].mean()))
            )
    return out


def format_segment_report(sample: SegmentSample, tokenizer: Any, shown: int = 6) -> str:
    """Markdown: rendered responses, segment statistics and rewards by position."""
    ends, batch = sample.ends, sample.batch
    count = ends.sum(dim=1).float()  # (N,)
    tokens = float((segment_lengths(ends, batch.response_mask) * count).sum())
    lines = [
        f"Segments per response {float(count.mean()):.2f}, mean segment length "
        f"{tokens / max(float(count.sum()), 1.0):.2f} tokens (EOS excluded), "
        f"{batch.num_samples} sampled responses.",
        "",
        "| p = k/K | segments | mean raw reward | mean normalized reward |",
        "|---|---|---|---|",
        *(f"| {r} | {n} | {a:+.3f} | {b:+.3f} |" for r, n, a, b in position_table(sample)),
        "",
        "Sampled responses (segment reward after each segment, `|` = boundary):",
        "",
    ]
    for row in range(min(shown, batch.num_samples)):
        lines.append(f"- `{batch.prompt_of_row(row)}` -> `{render_row(sample, row, tokenizer)}`")
    return "\n".join(lines) + "\n"


def write_segment_report(
    cfg: RLHFConfig, policy_dir: Path, prompts: list[str], out: Path, *, toyworld: bool
) -> Path:
    """Samples 2 responses per prompt from `policy_dir`, segments and scores them with the
    config's RM, and writes the markdown report (with the step correlation on the toy
    world) to `out`."""
    from ray_rlhf.models.builders import load_tokenizer

    batch = sample_rollouts(policy_dir, prompts, 2, cfg.data.max_response_tokens, cfg.run.seed)
    sample = segment_sample(cfg, batch)
    head = f"# Segment rewards of {policy_dir.name} ({cfg.segment.reward_granularity})\n\n"
    if toyworld:
        stats = step_correlation(sample)
        head += (
            f"Spearman(segment reward, true step correctness) = "
            f"{stats['segment/step_spearman']:.3f} over {stats['segment/step_pairs']:.0f} "
            "segments.\n\n"
        )
    out.write_text(head + format_segment_report(sample, load_tokenizer(policy_dir)))
    return out
