"""The plan of `ray-rlhf iterate` (loops/iterate.py): its phases in run order, where a
rerun continues, what each round starts from, and the config each phase runs with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray_rlhf.config import ContrastiveConfig, IterateConfig, RLHFConfig
from ray_rlhf.loops.common import DONE_MARKER, RunDirError

ROUND_PHASES = ("samples", "rm", "ppo")
SFT_PHASE = "sft"
META_FILE = "meta_responses.parquet"
TRUTH_RULE = "ray_rlhf.data.toyworld:true_reward"
UNSCORED_RULE = "ray_rlhf.loops.iterate:unscored"
"""Reward rule of the samples when no ground truth applies (`iterate.unscored`)."""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Phase:
    """One resumable step of the run: the SFT of π₀ (round 0) or a round's phase."""

    round: int
    name: str

    @property
    def key(self) -> str:
        """`sft` or `round_<r>/<name>`: the phase dir relative to the run dir."""
        return SFT_PHASE if self.name == SFT_PHASE else f"round_{self.round}/{self.name}"

    def dir(self, run_dir: Path) -> Path:
        return run_dir / self.key

    def __str__(self) -> str:
        return self.key if self.name == SFT_PHASE else f"round {self.round} {self.name}"


def phase_plan(rounds: int, *, sft: bool) -> list[Phase]:
    """Every phase in run order: `sft` first when π₀ is trained here, then the rounds."""
    plan = [Phase(0, SFT_PHASE)] if sft else []
    return plan + [Phase(r, name) for r in range(1, rounds + 1) for name in ROUND_PHASES]


def resume_point(plan: Sequence[Phase], done: Collection[str]) -> Phase | None:
    """The phase a run continues at: the first of `plan` whose key is not in `done` (None
    when all are).

    Raises:
        RunDirError: A later phase is done although an earlier one is not (the dir was
            changed by hand): its inputs would not be the ones it was made from.
    """
    first = next((p for p in plan if p.key not in done), None)
    if first is None:
        return None
    later = [p.key for p in plan[plan.index(first) + 1 :] if p.key in done]
    if later:
        raise RunDirError(
            f"{', '.join(later)} finished ({DONE_MARKER}) but {first.key} did not; remove "
            f"the phase dirs from {first.key} on to redo them"
        )
    return first


def done_phases(run_dir: Path, plan: Sequence[Phase]) -> set[str]:
    """The keys of the phases of `plan` whose dir holds a `DONE.json`."""
    return {p.key for p in plan if (p.dir(run_dir) / DONE_MARKER).is_file()}


@dataclass(frozen=True)
class RoundInputs:
    """What round r starts from."""

    policy: Path
    """π_{r-1}: samples are drawn from it and PPO starts from (and is KL-anchored to) it."""
    rm_init: Path | None
    """RM_{r-1}, continued by the round's update; None: a fresh head on π₀."""


def round_inputs(run_dir: Path, r: int, start_policy: Path, start_rm: Path | None) -> RoundInputs:
    """π_{r-1} and RM_{r-1}: the start ones for round 1, else round r-1's outputs."""
    if r == 1:
        return RoundInputs(start_policy, start_rm)
    prev = run_dir / f"round_{r - 1}"
    return RoundInputs(prev / "ppo" / "ppo_policy", prev / "rm" / "reward_model")


def start_policy(cfg: RLHFConfig, run_dir: Path) -> Path:
    """π₀: `model.path`, else the policy the `sft` phase writes."""
    return Path(cfg.model.path) if cfg.model.path else run_dir / SFT_PHASE / "policy"


def sample_rows(num_prompts: int, wanted: int, seed: int, r: int) -> list[int]:
    """The sorted prompt indices round r samples: `wanted` of `num_prompts` drawn with a
    seed of (run seed, round), or all of them when `wanted` is 0 or not less."""
    import torch

    if wanted == 0 or wanted >= num_prompts:
        return list(range(num_prompts))
    gen = torch.Generator().manual_seed(seed * 1009 + r)
    return sorted(torch.randperm(num_prompts, generator=gen)[:wanted].tolist())


# --------------------------------------------------------------------- phase configs


def iterate_section(cfg: RLHFConfig) -> IterateConfig:
    """The `iterate` section (set for every run of `ray-rlhf iterate`)."""
    assert cfg.iterate is not None  # run_job sets it
    return cfg.iterate


def round_config(cfg: RLHFConfig, samples_dir: Path) -> RLHFConfig:
    """`cfg` as a plain config of one round (no `iterate` section): MetaRM's meta responses
    are the round's samples (`samples_dir/meta_responses.parquet`)."""
    meta_path = str(samples_dir / META_FILE) if cfg.rm.meta.enabled else None
    data = dataclasses.replace(cfg.data, meta_responses_path=meta_path)
    return dataclasses.replace(cfg, data=data, iterate=None)


def samples_config(cfg: RLHFConfig, samples_dir: Path, *, truth: bool) -> RLHFConfig:
    """The baseline job's config for a round's samples: k = `iterate.samples_per_prompt`
    (else `rm.meta.k`) at the rollout temperature, scored by the toy world's truth (`truth`)
    or not at all."""
    it = iterate_section(cfg)
    contrastive = ContrastiveConfig(
        k=it.k(cfg.rm.meta.k),
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        include_eval_prompts=False,
        chunk_prompts=it.chunk_prompts,
    )
    rule = TRUTH_RULE if truth else UNSCORED_RULE
    reward = dataclasses.replace(cfg.reward, kind="rule", rule=rule, model_path=None)
    base = round_config(cfg, samples_dir)
    return dataclasses.replace(base, contrastive=contrastive, reward=reward)


def rm_config(cfg: RLHFConfig, inputs: RoundInputs, samples_dir: Path) -> RLHFConfig:
    """The RM update of a round: continues `inputs.rm_init` for `iterate.rm_steps` (else
    `rm.steps`) steps, or trains from π₀ for `rm.steps`; MetaRM reads the round's samples."""
    it = iterate_section(cfg)
    continued = inputs.rm_init is not None
    steps = it.rm_steps if continued and it.rm_steps is not None else cfg.rm.steps
    init = str(inputs.rm_init) if continued else None
    rm = dataclasses.replace(cfg.rm, steps=steps, init_path=init)
    return dataclasses.replace(round_config(cfg, samples_dir), rm=rm)


def ppo_config(cfg: RLHFConfig, samples_dir: Path, reward_model: Path) -> RLHFConfig:
    """PPO of a round: under the round's reward model."""
    reward = dataclasses.replace(cfg.reward, kind="model", model_path=str(reward_model))
    return dataclasses.replace(round_config(cfg, samples_dir), reward=reward)
