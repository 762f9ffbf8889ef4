"""Config sections of the reward methods: reward-model training (`rm`), contrastive rewards
(`contrastive`) and segment-level rewards (`segment`); `ray_rlhf.config` roots them under
`RLHFConfig` and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ray_rlhf.typed_config import check as _check

_PAPER_BETA = {"simcse": 1.0, "swav": 0.1}
"""beta of Wang et al. 2024 for each contrastive kind (docs/algorithms.md §3c)."""


@dataclass(frozen=True)
class RMContrastiveConfig:
    """Contrastive representation learning for the reward model (Secrets of RLHF II,
    docs/algorithms.md §3c): L = L_rm + beta * L_cl on two dropout views of the pooled
    last-token hidden state (the score head's input)."""

    kind: Literal["none", "simcse", "swav"] = "none"
    """`simcse`: InfoNCE between the views, in-batch negatives; `swav`: swapped prediction
    of Sinkhorn codes over `prototypes` learned prototypes; `none`: off."""
    target: Literal["responses", "differences"] = "responses"
    """Contrast the representation of every response (chosen and rejected: 2P rows), or
    the difference h_chosen - h_rejected of every pair (P rows)."""
    beta: float | None = None
    """Weight of L_cl. None: the paper's value, 1.0 for SimCSE and 0.1 for SwAV."""
    tau: float = 0.05
    """Temperature of the SimCSE / SwAV softmax."""
    prototypes: int = 50
    """K, SwAV's learned prototypes (trained with the model, saved in its checkpoints, not
    exported with the reward model)."""
    dropout: float = 0.05
    """Dropout rate of the two views. `views: forwards`: every dropout of the model
    (attention dropout and dropout modules, among them the one on the score head's input)
    runs at this rate in the views' forward, whatever the model's config says; `views:
    shared`: applied to the pooled state only, one mask per view."""
    views: Literal["forwards", "shared"] = "forwards"
    """`forwards`, as in SimCSE and the paper: one extra train-mode forward of the rows twice
    with every dropout at `dropout` (`forced_dropout`), so the two views differ inside the
    network even on a backbone without dropout (Llama, SmolLM2, the toy model). The BT rows
    keep a forward of their own at the model's own dropout (none on those models), so L_rm
    is the plain loss. 3x a plain step's rows, in two forwards per backward: the learner
    rejects it under ZeRO-3, and the views' forward runs without activation checkpointing.
    `shared`: both views from the BT rows' pooled states, differing only by their dropout
    masks on the pooled state; about the cost of plain BT, and works under ZeRO-3."""

    @property
    def weight(self) -> float:
        """beta, or the paper's value for `kind` when `beta` is None (0 when off)."""
        if self.kind == "none":
            return 0.0
        return _PAPER_BETA[self.kind] if self.beta is None else self.beta

    def __post_init__(self) -> None:
        _check(self.beta is None or self.beta >= 0, "beta", "must be >= 0 (or null)")
        _check(self.tau > 0, "tau", "must be > 0")
        _check(self.prototypes >= 2, "prototypes", "must be >= 2")
        _check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class RMMetaConfig:
    """MetaRM (Secrets of RLHF II, docs/algorithms.md §3d): before each BT gradient, one
    plain gradient-ascent step on the reward spread J of unlabeled policy samples
    (`data.meta_responses_path`); the BT gradient is taken there and applied at the
    original parameters."""

    enabled: bool = False
    """Train with the MetaRM update (needs `data.meta_responses_path`, the scalar head and
    ZeRO stage 0-2)."""
    eta: float = 0.1
    """Step size of the SGD ascent theta' = theta + eta * grad J (outside the optimizer).
    OPEN in the paper; on the toy model 0.1 raises J by 0.005-0.009 per step."""
    k: int = 4
    """Responses per prompt in J (the first k of each meta row)."""
    batch_size: int = 16
    """Meta prompts per step (global), each with its k responses."""

    def __post_init__(self) -> None:
        _check(self.eta >= 0, "eta", "must be >= 0")
        _check(self.k >= 2, "k", "must be >= 2 (J compares responses of one prompt)")
        _check(self.batch_size > 0, "batch_size", "must be > 0")


@dataclass(frozen=True)
class RMConfig:
    """Reward-model training."""

    head: Literal["scalar", "per_position"] = "scalar"
    """Scalar last-token score, or a score at every position (segment rewards)."""
    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 64
    """Pairs per step (global)."""
    lr: float | None = None
    """AdamW learning rate. None: 9e-6 for a pretrained model (20M parameters or more),
    1e-3 below (`ray_rlhf.learning_rates`)."""
    margin: bool = False
    """Use per-pair margins when the dataset has a `margin` column."""
    label_smoothing: float = 0.0
    """Label smoothing alpha of the BT loss."""
    warmup_steps: int = 10
    """Linear warmup steps (capped at `steps`), then cosine decay to 10%."""
    log_every: int = 10
    """Report training metrics (and print progress) every this many steps."""
    eval_every: int = 50
    """Report held-out accuracy (`eval/accuracy`) every this many steps and at the end."""
    checkpoint_every: int = 0
    """Report a resumable checkpoint every this many steps (0: only at the end)."""
    loss: Literal[
        "plain", "flip", "margin", "flip_margin", "smooth_negative_margin", "smoothing"
    ] = "plain"
    """Preference-strength loss (Secrets of RLHF II, docs/algorithms.md §3b). Every variant but
    `plain` and `smoothing` reads the per-pair strength from the `strength` column that
    `ray-rlhf preference-strength` writes. `smoothing` / `smooth_negative_margin` use
    `label_smoothing` as alpha (everywhere / only on pairs with strength < 0)."""
    flip_mode: Literal["negative", "bottom_fraction"] = "negative"
    """Which pairs the flip variants flip: strength < 0, or the `flip_fraction` weakest."""
    flip_fraction: float = 0.1
    """Share of pairs flipped per batch with `flip_mode: bottom_fraction`."""
    prioritized: bool = False
    """Prompt-free prioritized BT loss (Mao et al. 2025, docs/algorithms.md §1): pairs whose
    preference the prompt-free gap already explains get less weight."""
    prompt_free_prompts: int = 4
    """Other in-batch prompts each pair is scored under to estimate its prompt-free gap."""
    prioritized_tau: float = 0.5
    """Temperature of the prioritized weights' softmax over the batch. With `alpha` 1 this
    default beat tau 1 / alpha 0.5 on the toy's shifted split on 5 of 6 seeds
    (docs/evidence/history.md)."""
    prioritized_alpha: float = 1.0
    """Share of the prioritized weights in the mix with uniform weights (0: plain BT)."""
    ensemble_members: int = 4
    """Reward models trained by `ray-rlhf preference-strength` (M)."""
    contrastive: RMContrastiveConfig = field(default_factory=RMContrastiveConfig)
    """Contrastive representation term (docs/algorithms.md §3c)."""
    meta: RMMetaConfig = field(default_factory=RMMetaConfig)
    """MetaRM update (docs/algorithms.md §3d)."""
    init_path: str | None = None
    """Reward-model dir (a `train-rm` output with the same `head`) to continue training
    from; its tokenizer encodes the pairs. None: the policy (`model.path`, or the tiny
    model) with a fresh head. `ray-rlhf iterate` sets it each round to the last round's RM."""

    @property
    def uses_strength(self) -> bool:
        """Whether the loss reads a per-pair strength column."""
        return self.loss not in ("plain", "smoothing")

    def __post_init__(self) -> None:
        _check(self.steps > 0, "steps", "must be > 0")
        _check(0 <= self.flip_fraction <= 1, "flip_fraction", "must be in [0, 1]")
        _check(self.prompt_free_prompts >= 1, "prompt_free_prompts", "must be >= 1")
        _check(self.prioritized_tau > 0, "prioritized_tau", "must be > 0")
        _check(0 <= self.prioritized_alpha <= 1, "prioritized_alpha", "must be in [0, 1]")
        _check(self.ensemble_members >= 1, "ensemble_members", "must be >= 1")
        _check(
            self.loss not in ("smoothing", "smooth_negative_margin") or self.label_smoothing > 0,
            "label_smoothing",
            f"must be > 0 with loss '{self.loss}' (it is the smoothing alpha)",
        )
        _check(
            not (self.margin and self.loss in ("margin", "flip_margin", "smooth_negative_margin")),
            "margin",
            f"a dataset margin column cannot be combined with the strength margin of loss "
            f"'{self.loss}'",
        )
        _check(
            not (self.prioritized and self.head == "per_position"),
            "prioritized",
            "is implemented for the scalar head only",
        )
        _check(self.batch_size > 0, "batch_size", "must be > 0")
        _check(self.lr is None or self.lr > 0, "lr", "must be > 0")
        _check(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _check(self.log_every > 0, "log_every", "must be > 0")
        _check(self.eval_every > 0, "eval_every", "must be > 0")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        _check(
            not (self.meta.enabled and self.head == "per_position"),
            "meta.enabled",
            "is implemented for the scalar head only (rm.head=scalar)",
        )


@dataclass(frozen=True)
class ContrastiveConfig:
    """Contrastive rewards (Shen et al. 2024, arXiv 2403.07708; docs/algorithms.md §2): the
    offline baseline job (`ray-rlhf sample-baselines`) and the PPO reward transform."""

    enabled: bool = False
    """PPO reward actors score r(x, y) - aggregate of x's offline baseline rewards."""
    baselines_path: str | None = None
    """Baseline dataset PPO reads (the job's output); required when `enabled`."""
    aggregate: Literal["mean", "median", "quantile"] = "mean"
    """How x's k baseline rewards become one baseline (applied when PPO loads the file)."""
    quantile: float = 0.5
    """The quantile in [0, 1] when `aggregate` is `quantile` (linear interpolation)."""
    on_missing: Literal["error", "raw"] = "error"
    """A prompt id absent from the baseline file: stop with an error naming it and the file,
    or log it and use the raw reward for that prompt."""
    k: int = 4
    """Baseline responses sampled per prompt from the frozen SFT policy (`model.path`)."""
    temperature: float = 1.0
    """Sampling temperature of the baseline responses."""
    top_p: float = 1.0
    """Nucleus sampling mass of the baseline responses."""
    include_eval_prompts: bool = True
    """Also sample baselines for the held-out prompts (PPO's periodic evaluation scores
    them through the same reward actors)."""
    chunk_prompts: int = 64
    """Prompts per resumable shard of the baseline job."""
    output_path: str | None = None
    """Where the job writes the dataset (parquet). None: `<run dir>/baselines.parquet`."""

    def __post_init__(self) -> None:
        _check(
            not self.enabled or self.baselines_path is not None,
            "baselines_path",
            "required when contrastive.enabled is true",
        )
        _check(0.0 <= self.quantile <= 1.0, "quantile", "must be in [0, 1]")
        _check(self.k >= 1, "k", "must be >= 1")
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.chunk_prompts >= 1, "chunk_prompts", "must be >= 1")


@dataclass(frozen=True)
class SegmentConfig:
    """Segment-level rewards (Yin et al. 2025, arXiv 2501.02790; docs/algorithms.md §5)."""

    reward_granularity: Literal["bandit", "segment", "token"] = "bandit"
    """PPO rewards: `bandit` = a scalar RM's score on the last token; `segment` = a
    per-position RM's normalized segment rewards spread over entropy segments (threshold
    `threshold`); `token` = the same with c = 0. Also picks the segmentation of
    `rm.head: per_position` training (which needs `segment` or `token`)."""
    threshold: float = 2.0
    """Entropy threshold c in nats: a segment ends after a token whose next-token entropy
    under the reference model exceeds c (the paper's default is 2.0)."""
    min_std: float = 0.05
    """Floor of the normalizer's sigma(p) (a line in log p can reach 0 at extreme p)."""
    normalizer_samples: int = 2000
    """Responses scored to fit mu(p), sigma(p)."""
    normalizer_source: Literal["pairs", "policy"] = "pairs"
    """Which responses fit the normalizer: `pairs` = the RM's training pairs (chosen and
    rejected rows); `policy` = samples of the reference (SFT) policy on the RL prompts,
    the distribution PPO's first rollouts come from (the paper's choice)."""
    huber_epsilon: float = 1.35
    """Huber threshold of the mu(p), sigma(p) regressions."""

    def __post_init__(self) -> None:
        _check(self.threshold >= 0, "threshold", "must be >= 0")
        _check(self.min_std > 0, "min_std", "must be > 0")
        _check(self.normalizer_samples >= 2, "normalizer_samples", "must be >= 2")
        _check(self.huber_epsilon > 0, "huber_epsilon", "must be > 0")
