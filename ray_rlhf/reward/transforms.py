"""Which `RewardTransform`s the reward actors apply, from the config.

One place maps config sections to reward stages so the PPO loop, the evaluation and the
offline jobs build the same pipeline. Order matters: segment rewards (ALGORITHMS.md §5)
come first, then the contrastive baseline subtraction (§2), then diagnostics that only
read the rewards (the prompt-free / prompt-related split, §1).
"""

from __future__ import annotations

from ray_rlhf.config import RLHFConfig
from ray_rlhf.reward.scorer import RewardTransform


def build_transforms(cfg: RLHFConfig) -> tuple[RewardTransform, ...]:
    """The reward stages `cfg` asks for, in pipeline order (empty: raw scores only).

    Args:
        cfg: The run's config; each stage reads its own section.

    Returns:
        Picklable transforms for `RewardPool(transforms=...)` / `RewardScorer`.
    """
    transforms: list[RewardTransform] = []
    return tuple(transforms)
