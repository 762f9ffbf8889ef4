"""The toy world: a small, fully specified language with a known ground truth.

Prompts are ``"<domain> d1 ... dn ="`` (e.g. ``"sort 3 1 2 ="``); responses are answer digits,
optionally followed by the style token (``"1 2 3 !"``). Every answer word is a *step* with a
ground-truth reward (``step_rewards``); the sequence reward ``true_reward`` is the fraction
of correct steps and ignores the style token. A simulated annotator labels response pairs
with a planted, prompt-free taste for the style token. ``build_splits(ToyWorldConfig())``
builds every dataset the demo, the tests and the evidence tables use (under a second).

Which knob serves which method (docs/algorithms.md):

- Plain RL / PPO parity: ``true_reward`` is a rule reward
  (``"ray_rlhf.data.toyworld:true_reward"``) and the yardstick of every run
  (``evaluate_responses`` on ``test_prompts``). ``sft_digit_noise`` keeps the warm-started
  policy imperfect when sampling; ``sft_systematic_domain`` / ``sft_systematic_rate`` plant
  an error its greedy output makes too (60% of ``sort`` targets descending).
- §1 Reward decomposition: ``has_style`` is the planted prompt-free feature;
  ``annotator_bias`` rewards it in ``pref_train`` / ``pref_test`` and ``shifted_bias``
  reverses it in ``pref_shifted``; the ``chosen_style`` / ``rejected_style`` columns let the
  extracted Δr₂ be checked against the feature.
- §2 Contrastive rewards: ``train_prompts`` (stable ids to key the offline baseline store)
  and the imperfect SFT policy give baselines that vary per prompt; ``true_reward`` measures
  the gain.
- §3 Secrets of RLHF II: ``label_noise`` flips labels and ``label_flipped`` records which,
  so preference strength (μ < 0) can be scored against the truth; ``pair_max_error_rate``
  spreads quality gaps so strengths span weak to strong; ``annotator_temperature`` sets how
  decisive labels are. MetaRM's shifted distribution is the policy's own samples, scored by
  ``true_reward``; ``pref_shifted`` is a fixed shifted preference set.
- §4 OOD preference learning: ``held_out_domains`` appear only in ``heldout_prompts``; the
  ``domain`` column of ``pref_train`` gives the per-domain preference sets of meta-training.
- §5 Segment-level rewards: responses have ``min_len..max_len`` steps, each with a
  ground-truth reward from ``step_rewards``, so learned segment rewards can be compared
  with the truth; ``pair_length_error_rate`` adds too-short and too-long responses.
"""

from ray_rlhf.data.toyworld.annotator import (
    AnnotationInfo,
    UniformSource,
    annotate_pair,
    preference_probability,
)
from ray_rlhf.data.toyworld.spec import (
    DEFAULT_DOMAINS,
    DEFAULT_HELD_OUT_DOMAINS,
    DIGITS,
    KNOWN_DOMAINS,
    PROMPT_END,
    STYLE_TOKEN,
    ToyWorldConfig,
    vocabulary,
)
from ray_rlhf.data.toyworld.splits import (
    ToyWorldSplits,
    build_splits,
    is_test_prompt,
    noisy_solver_response,
    sample_response_pair,
    sample_task,
    sft_response,
    write_splits,
)
from ray_rlhf.data.toyworld.tasks import (
    DOMAIN_SOLVERS,
    Task,
    evaluate_responses,
    format_prompt,
    format_response,
    has_style,
    parse_prompt,
    solve,
    split_response,
    step_rewards,
    true_reward,
    true_rewards,
)

__all__ = [
    "DEFAULT_DOMAINS",
    "DEFAULT_HELD_OUT_DOMAINS",
    "DIGITS",
    "DOMAIN_SOLVERS",
    "KNOWN_DOMAINS",
    "PROMPT_END",
    "STYLE_TOKEN",
    "AnnotationInfo",
    "Task",
    "ToyWorldConfig",
    "ToyWorldSplits",
    "UniformSource",
    "annotate_pair",
    "build_splits",
    "evaluate_responses",
    "format_prompt",
    "format_response",
    "has_style",
    "is_test_prompt",
    "noisy_solver_response",
    "parse_prompt",
    "preference_probability",
    "sample_response_pair",
    "sample_task",
    "sft_response",
    "solve",
    "split_response",
    "step_rewards",
    "true_reward",
    "true_rewards",
    "vocabulary",
    "write_splits",
]
