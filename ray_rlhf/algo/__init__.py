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
from ray_rlhf.algo.decompose import (
    PromptFreeGap,
    cross_prompt_gaps,
    in_batch_alternative_indices,
    prioritized_weights,
    prompt_free_gap_bisection,
    prompt_related_gap,
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
from ray_rlhf.algo.offpolicy import ISWeightStats, truncated_is_weights
from ray_rlhf.algo.ppo_loss import (
    PolicyLossStats,
    ValueLossStats,
    entropy_bonus,
    kl_loss,
    policy_loss,
    value_loss,
)
from ray_rlhf.algo.rewards import place_last_token_rewards
from ray_rlhf.algo.rm_contrastive import (
    MetaStepStats,
    alignment,
    meta_difference,
    meta_rm_backward,
    simcse_loss,
    sinkhorn_codes,
    swav_loss,
    uniformity,
)
from ray_rlhf.algo.rm_loss import (
    RMLossStats,
    bradley_terry_loss,
    group_pair_agreement,
    preference_accuracy,
)
from ray_rlhf.algo.sft import SFTLossStats, sft_loss
from ray_rlhf.algo.strength import (
    StrengthLossTerms,
    StrengthStats,
    apply_flip,
    flip_mask,
    preference_strength,
    strength_loss_terms,
)
from ray_rlhf.algo.tokens import (
    logit_positions,
    response_token_entropy,
    response_token_logprobs,
    token_logprobs,
    token_values,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "GAEResult",
    "ISWeightStats",
    "KLController",
    "KLEstimator",
    "MetaStepStats",
    "PolicyLossStats",
    "PromptFreeGap",
    "RMLossStats",
    "SFTLossStats",
    "StrengthLossTerms",
    "StrengthStats",
    "ValueLossStats",
    "alignment",
    "apply_flip",
    "apply_kl_penalty",
    "bradley_terry_loss",
    "broadcast_sequence_advantage",
    "compute_gae",
    "cross_prompt_gaps",
    "entropy_bonus",
    "entropy_from_logits",
    "flip_mask",
    "gather_last",
    "group_normalized_advantages",
    "group_pair_agreement",
    "in_batch_alternative_indices",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_loss",
    "logit_positions",
    "logprobs_from_logits",
    "masked_entropy_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "meta_difference",
    "meta_rm_backward",
    "place_last_token_rewards",
    "policy_loss",
    "preference_accuracy",
    "preference_strength",
    "prioritized_weights",
    "prompt_free_gap_bisection",
    "prompt_related_gap",
    "reinforce_pp_advantages",
    "reinforce_pp_returns",
    "response_token_entropy",
    "response_token_logprobs",
    "rloo_advantages",
    "sft_loss",
    "simcse_loss",
    "sinkhorn_codes",
    "strength_loss_terms",
    "swav_loss",
    "token_logprobs",
    "token_values",
    "truncated_is_weights",
    "uniformity",
    "value_loss",
]
