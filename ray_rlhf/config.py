"""Typed, frozen configuration: one dataclass per role under the `RLHFConfig` root.

Configs come from YAML files plus dotted command-line overrides (`ppo.kl.coef=0.05`).
Unknown keys, wrong types and inconsistent combinations raise `ConfigError` naming the
dotted key, before any Ray, vLLM or DeepSpeed work starts. Every field has a docstring
(the line under it); `ray-rlhf config [overrides]` prints the resolved tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ray_rlhf.config_checks import check_combinations
from ray_rlhf.config_checks import requested_cpus as requested_cpus  # re-exported
from ray_rlhf.config_iterate import IterateConfig
from ray_rlhf.config_meta import MetaConfig
from ray_rlhf.config_ppo import PPOConfig, RewardConfig, RolloutConfig
from ray_rlhf.config_rewards import ContrastiveConfig, RMConfig, SegmentConfig
from ray_rlhf.data.toyworld.spec import ToyWorldConfig
from ray_rlhf.typed_config import (
    ConfigError,
    build,
    merge,
    parse_override,
    set_dotted,
    to_dict,
)
from ray_rlhf.typed_config import check as _check


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Llama built from config when `model.path` is unset."""

    hidden_size: int = 64
    """Hidden width; hidden_size / num_heads must be a head_dim vLLM's CPU backend supports."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 2
    """Attention heads (head_dim = hidden_size / num_heads >= 32 on CPU)."""
    intermediate_size: int = 256
    """MLP width."""
    max_position_embeddings: int = 128
    """Longest prompt + response in tokens."""
    seed: int = 0
    """Seed of the random initialization."""


@dataclass(frozen=True)
class ModelConfig:
    """Which policy to start from."""

    path: str | None = None
    """Local HF causal-LM directory. None: build the tiny model from `tiny` (toy world)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Tiny-model shape used when `path` is None."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model dir. Off: nothing from the dir is executed."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype for learners and rollout engines."""


@dataclass(frozen=True)
class DataConfig:
    """Where prompts and training examples come from."""

    sft_path: str | None = None
    """SFT file/dir (json, jsonl, parquet) or hub name. None: the toy world's SFT split."""
    prompts_path: str | None = None
    """RL prompt file/dir or hub name. None: the toy world's train prompts."""
    eval_prompts_path: str | None = None
    """Held-out prompts for evaluation. None: a seeded slice of `prompts_path`
    (`eval_fraction`), or the toy world's test prompts when `prompts_path` is None too."""
    eval_fraction: float = 0.05
    """Share of `prompts_path` held out as eval prompts when `eval_prompts_path` is None
    (seeded by `run.seed`; at least 1 and at most 256 prompts)."""
    preferences_path: str | None = None
    """Preference pairs for RM training. None: the toy world's train pairs."""
    eval_preferences_path: str | None = None
    """Held-out preference pairs for the RM's `eval/accuracy` (same layout). None: a seeded
    10 % of `preferences_path` is held out (it trains on the rest), or the toy world's test
    pairs when `preferences_path` is None too."""
    meta_responses_path: str | None = None
    """Unlabeled policy samples for MetaRM (`rm.meta`): json / jsonl / parquet rows with a
    `prompt` and a `responses` list of at least `rm.meta.k` texts (a `ray-rlhf
    sample-baselines` output has this layout). Required when `rm.meta.enabled`."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens; a longer one is a data error (file, row, field), never
    truncated. None: the longest prompt of the run's data (the toy world: 32), capped by the
    model's `max_position_embeddings` (`ray_rlhf.data.limits`)."""
    max_response_tokens: int | None = None
    """Generation length limit; longer SFT / preference responses are a data error. None:
    256, or the longest SFT / preference response if longer (the toy world: 16), capped by
    the model's `max_position_embeddings` minus the prompt limit."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """Render plain-text prompts (SFT, preference and PPO rows whose prompt is text) with the
    tokenizer's chat template, as one user message plus the generation prompt: `auto` when
    the tokenizer has a template, `always` (a tokenizer without one is an error), `never`.
    Chat rows (message lists) always use the template. Rule rewards get the text as
    written (`ray_rlhf.reward.rules`)."""
    toyworld: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    """The built-in toy world (used wherever a path above is None)."""

    def __post_init__(self) -> None:
        _check(0 < self.eval_fraction < 1, "eval_fraction", "must be in (0, 1)")
        derived = "must be > 0 (or null: derived from the data)"
        _check(
            self.max_prompt_tokens is None or self.max_prompt_tokens > 0,
            "max_prompt_tokens",
            derived,
        )
        _check(
            self.max_response_tokens is None or self.max_response_tokens > 0,
            "max_response_tokens",
            derived,
        )


@dataclass(frozen=True)
class LearnerConfig:
    """DeepSpeed learners running inside a Ray Train worker group."""

    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    cpus_per_worker: int = 1
    """CPUs each worker requests; also its torch / OpenMP thread count."""
    use_gpu: bool = False
    """One GPU per worker and NCCL instead of gloo."""
    zero_stage: Literal[0, 1, 2, 3] | None = None
    """DeepSpeed ZeRO stage; null (default) picks 0 for one learner (nothing to shard, and
    ZeRO's buffers cost memory and time) and 2 for several. The chosen stage is stored in
    the run's config.yaml and printed at start."""
    bf16: bool = False
    """bf16 mixed precision (ZeRO stages 0, 2, 3 on CPU)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    max_failures: int = 1
    """Ray Train restarts of the worker group from the last checkpoint."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them
    (HF `gradient_checkpointing_enable`): activation memory falls from O(layers) to O(1)
    layers for about one extra forward of compute. For long sequences and large batches."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "num_workers", "must be >= 1")
        if self.zero_stage is None:
            object.__setattr__(self, "zero_stage", 0 if self.num_workers == 1 else 2)
        _check(self.cpus_per_worker >= 1, "cpus_per_worker", "must be >= 1")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        _check(self.max_failures >= -1, "max_failures", "must be >= 0 (or -1: unlimited)")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the policy on (prompt, response) pairs."""

    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """Global batch (split evenly across learner workers)."""
    lr: float | None = None
    """Peak AdamW learning rate (linear warmup, cosine decay to 10%). None: 5e-6 for a
    pretrained model (20M parameters or more), 3e-3 below (`ray_rlhf.learning_rates`)."""
    warmup_steps: int = 50
    """Linear warmup steps (capped at `steps`)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    log_every: int = 50
    """Report metrics (and print progress) every this many steps."""
    checkpoint_every: int = 500
    """Report a resumable checkpoint every this many steps (0: only at the end)."""

    def __post_init__(self) -> None:
        _check(self.steps > 0, "steps", "must be > 0")
        _check(self.batch_size > 0, "batch_size", "must be > 0")
        _check(self.lr is None or self.lr > 0, "lr", "must be > 0")
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _check(self.log_every > 0, "log_every", "must be > 0")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    """The Ray cluster."""

    address: str | None = None
    """Ray address to join; None starts an embedded local cluster (or joins the job's)."""
    custom_resources: Literal["auto", "always", "never"] = "auto"
    """Request the `rollout` / `learner` custom resources of cluster.yaml's node types:
    `always` on autoscaling clusters that start with zero such nodes, `auto` only when the
    cluster already has them, `never` to ignore them."""
    num_cpus: int | None = None
    """Logical CPUs of the embedded cluster. None: the cores, or more if the configured
    learners + rollout + reward actors request more (they take turns: a synchronous
    iteration never runs them all at once, and each gets an explicit thread count)."""
    omp_spin_count: int = 0
    """How long a worker's idle OpenMP threads spin before they sleep (`GOMP_SPINCOUNT`,
    about 100,000 per ms; only workers with more than one thread have idle OpenMP
    threads). 0: they sleep at once (`OMP_WAIT_POLICY=PASSIVE`). A short spin (1,000,000,
    about 10 ms) can help roles with several threads that take turns on the cores; its
    measured effect was mixed (docs/cpu_stack.md, "Threads"). Never spin when roles compute
    at the same time (`ppo.async_rollouts`). An exported `GOMP_SPINCOUNT` wins."""

    def __post_init__(self) -> None:
        _check(self.omp_spin_count >= 0, "omp_spin_count", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "run"
    """Run name; outputs go to `<output_dir>/<name>`."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed of data order, sampling and initialization."""
    overwrite: bool = False
    """Allow writing into an existing run directory that holds a finished run."""
    allow_config_change: bool = False
    """Resume an unfinished run dir even though its stored `config.yaml` differs from this
    config in a key that changes the result (model, data, algorithm, sizes, seeds;
    `ray_rlhf.config_diff`). Off: such a rerun is refused, naming the keys."""

    @property
    def run_dir(self) -> Path:
        """The directory this run writes to."""
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class RLHFConfig:
    """Root config: one section per role."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    iterate: IterateConfig | None = None
    """Iterative rounds; set (`iterate={}` or keys under it) only by `ray-rlhf iterate`."""

    def __post_init__(self) -> None:
        check_combinations(self)  # checks across sections (config_checks.py)


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    defaults: list[str] | tuple[str, ...] = (),
) -> RLHFConfig:
    """Read a YAML file (optional), apply dotted overrides, and validate everything.

    Args:
        path: YAML file whose top-level keys are sections of `RLHFConfig`.
        overrides: `section.key=value` strings applied after the file, in order.
        defaults: `section.key=value` strings applied *under* the file (a command's own
            defaults, e.g. the demo's run name).

    Raises:
        ConfigError: naming the file or the dotted key that is wrong.
    """
    return load_config_with(path, overrides, defaults)[0]


def load_config_with(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    defaults: list[str] | tuple[str, ...] = (),
    extra: dict[str, type] | None = None,
) -> tuple[RLHFConfig, dict[str, Any]]:
    """`load_config` for jobs with sections of their own (e.g. an evidence grid).

    Args:
        path, overrides, defaults: As for `load_config`.
        extra: Top-level section name -> frozen dataclass; those sections (and their
            `name.key=value` overrides) are built into that class instead of `RLHFConfig`.

    Returns:
        The `RLHFConfig` and name -> built extra section (defaults when absent).

    Raises:
        ConfigError: naming the file or the dotted key that is wrong.
    """
    tree: dict[str, Any] = {}
    for text in defaults:
        set_dotted(tree, *parse_override(text))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p}: invalid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping of sections")
        tree = merge(tree, loaded)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    sections = {
        name: build(cls, tree.pop(name, None) or {}, name) for name, cls in (extra or {}).items()
    }
    return build(RLHFConfig, tree, ""), sections


def dump_config(cfg: RLHFConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (reloadable with `load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
