"""Reward side: rule and reward-model scoring of rollout batches (plain classes, no Ray).

`RewardScorer` turns a `RolloutBatch` into a `ScoredBatch`; `RewardTransform` is the stage
interface the segment, contrastive and decomposition methods plug into (docs/algorithms.md);
`load_rule` loads `"module:function"` / `"file.py:function"` rule rewards. The Ray actor
pool around the scorer is `ray_rlhf.distributed.reward_pool.RewardPool`.
"""

from ray_rlhf.reward.rules import (
    Rule,
    RuleRowError,
    RuleSource,
    absolute_rule_spec,
    is_batched,
    load_rule,
)
from ray_rlhf.reward.scorer import (
    ModelSource,
    RewardContext,
    Rewards,
    RewardScorer,
    RewardTransform,
    ScoreSource,
    clamp_rewards,
    describe_row,
)

__all__ = [
    "ModelSource",
    "RewardContext",
    "RewardScorer",
    "RewardTransform",
    "Rewards",
    "Rule",
    "RuleRowError",
    "RuleSource",
    "ScoreSource",
    "absolute_rule_spec",
    "clamp_rewards",
    "describe_row",
    "is_batched",
    "load_rule",
]
