"""Which `RewardTransform`s the reward actors apply, from the config.

One place maps config sections to reward stages so the PPO loop, the evaluation and the
offline jobs build the same pipeline. Order matters: segment rewards (docs/algorithms.md §5)
come first, then the contrastive baseline subtraction (§2), then diagnostics that only
read the rewards (the prompt-free / prompt-related split, §1).
"""

from __future__ import annotations

from ray_rlhf.config import RLHFConfig
from ray_rlhf.reward.scorer import RewardTransform


def build_transforms(cfg: RLHFConfig, *, contrastive: bool = True) -> tuple[RewardTransform, ...]:
    """The reward stages `cfg` asks for, in pipeline order (empty: raw scores only).

    Args:
        cfg: The run's config; each stage reads its own section.
        contrastive: Include the contrastive baseline subtraction when
            `cfg.contrastive.enabled`. The offline baseline job passes False: it scores
            baseline samples with the stages that come *before* the subtraction, so a
            baseline is on the same scale as the score it is subtracted from.

    Returns:
        Picklable transforms for `RewardPool(transforms=...)` / `RewardScorer`.

    Raises:
        DataValidationError: If the contrastive baseline file is missing or malformed.
    """
    transforms: list[RewardTransform] = []
    from ray_rlhf.reward.segments import build_segment_transform

    segment = build_segment_transform(cfg)  # None for bandit (last-token) rewards
    if segment is not None:
        transforms.append(segment)
    if contrastive and cfg.contrastive.enabled:
        from ray_rlhf.reward.contrastive import ContrastiveTransform

        transforms.append(ContrastiveTransform.from_config(cfg.contrastive))
    if cfg.reward.prompt_free_prompts > 0:
        from ray_rlhf.reward.decomposition import PromptFreeDiagnostics

        transforms.append(PromptFreeDiagnostics(cfg.reward.prompt_free_prompts, cfg.run.seed))
    return tuple(transforms)
