"""Config section `iterate`: iterative RLHF rounds (`ray-rlhf iterate`, docs/reward_models.md
§5). `ray_rlhf.config` roots it under `RLHFConfig` (null unless the command is `iterate`,
which sets it) and re-exports it; checks against other sections are in `config_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_rlhf.typed_config import check as _check


@dataclass(frozen=True)
class IterateConfig:
    """R rounds of: sample k responses per prompt with the current policy (rollout pool),
    update the reward model (MetaRM when `rm.meta.enabled`, with those samples as its meta
    responses; else plain), run PPO from the current policy under the updated RM.

    Each round's RM update takes `rm.steps` steps (`rm_steps` from the second update on),
    each round's PPO `ppo.iterations` iterations; both start a fresh optimizer and learning
    rate schedule, and PPO's KL reference is the policy the round starts from."""

    rounds: int = 3
    """R, the number of rounds."""
    sample_prompts: int = 256
    """PPO train prompts sampled per round (a seeded draw, a new one every round; 0 or more
    than there are: all of them)."""
    samples_per_prompt: int | None = None
    """k, responses sampled per prompt (at `rollout.temperature` / `rollout.top_p`). None:
    `rm.meta.k`. At least 2 (the report's accuracy compares responses of one prompt)."""
    rm_steps: int | None = None
    """Steps of an RM update that continues an RM (every round after the first, and the
    first when `reward.model_path` gives the starting RM). None: `rm.steps`, which is also
    the budget of a first RM trained from the policy."""
    chunk_prompts: int = 64
    """Prompts per resumable shard of a round's sampling."""

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "rounds", "must be >= 1")
        _check(self.sample_prompts >= 0, "sample_prompts", "must be >= 0 (0: all)")
        _check(
            self.samples_per_prompt is None or self.samples_per_prompt >= 2,
            "samples_per_prompt",
            "must be >= 2 (or null: rm.meta.k)",
        )
        _check(self.rm_steps is None or self.rm_steps > 0, "rm_steps", "must be > 0 (or null)")
        _check(self.chunk_prompts >= 1, "chunk_prompts", "must be >= 1")

    def k(self, meta_k: int) -> int:
        """Responses per prompt: `samples_per_prompt`, else `rm.meta.k` (`meta_k`)."""
        return self.samples_per_prompt if self.samples_per_prompt is not None else meta_k
