"""Pure RLHF math: functions of tensors, importing only torch and the standard library.

Nothing here may import ray, vllm, deepspeed, transformers or datasets
(``tests/unit/test_algo_purity.py`` enforces it).
"""

from ray_rlhf.algo.advantages import (
    GAEResult,
    broadcast_sequence_advantage,
    compute_gae,
    group_normalized_advantages,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)
from ray_rlhf.algo.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    KLEstimator,
    apply_kl_penalty,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
)
from ray_rlhf.algo.masking import (
    entropy_from_logits,
    gather_last,
    logprobs_from_logits,
    masked_entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from ray_rlhf.algo.ppo_loss import (
    PolicyLossStats,
    ValueLossStats,
    entropy_bonus,
    kl_loss,
    policy_loss,
    value_loss,
)
from ray_rlhf.algo.rm_loss import RMLossStats, bradley_terry_loss, preference_accuracy

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "GAEResult",
    "KLController",
    "KLEstimator",
    "PolicyLossStats",
    "RMLossStats",
    "ValueLossStats",
    "apply_kl_penalty",
    "bradley_terry_loss",
    "broadcast_sequence_advantage",
    "compute_gae",
    "entropy_bonus",
    "entropy_from_logits",
    "gather_last",
    "group_normalized_advantages",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_loss",
    "logprobs_from_logits",
    "masked_entropy_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "preference_accuracy",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "rloo_advantages",
    "value_loss",
]
