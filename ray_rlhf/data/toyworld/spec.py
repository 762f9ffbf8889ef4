"""Vocabulary and configuration of the toy world.

The toy world is a tiny, fully specified language: a prompt names a domain and lists digits
(``"sort 3 1 2 ="``), the response lists the answer digits (``"1 2 3"``), optionally followed
by a style token that the ground-truth reward ignores (``"1 2 3 !"``). Everything here is
plain data; the domains' meaning lives in ``tasks.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
"""The ten digit words, in numeric order."""

PROMPT_END = "="
"""The word that ends every prompt."""

STYLE_TOKEN = "!"
"""The default style token: a response-only feature that the true reward ignores."""

KNOWN_DOMAINS: tuple[str, ...] = ("sort", "rev", "copy", "max", "sum", "count", "min", "sortd")
"""Every domain keyword the world defines, in vocabulary order (see ``tasks.DOMAIN_SOLVERS``)."""

DEFAULT_DOMAINS: tuple[str, ...] = ("sort", "rev", "copy", "max", "sum", "count")
"""Training domains of the default world."""

DEFAULT_HELD_OUT_DOMAINS: tuple[str, ...] = ("min", "sortd")
"""Held-out domains of the default world: they appear only in the held-out prompt split."""

TEST_PARTITION_MODULUS = 8
"""One prompt text in this many belongs to the test partition (see ``splits.is_test_prompt``)."""

_PROBABILITY_FIELDS = (
    "sft_digit_noise",
    "sft_style_rate",
    "sft_systematic_rate",
    "label_noise",
    "pair_style_rate",
    "pair_max_error_rate",
    "pair_length_error_rate",
)
_SIZE_FIELDS = (
    "n_sft",
    "n_train_prompts",
    "n_test_prompts",
    "n_heldout_prompts",
    "n_pref_train",
    "n_pref_test",
    "n_pref_shifted",
)


@dataclass(frozen=True)
class ToyWorldConfig:
    """Every knob of the toy world; a seed makes every split reproducible.

    Sequences given as lists (e.g. from YAML) are stored as tuples.
    """

    seed: int = 0
    """Root seed; each split draws from its own generator derived from it and its name."""
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    """Training domains: used by the SFT, train/test prompt and preference splits."""
    held_out_domains: tuple[str, ...] = DEFAULT_HELD_OUT_DOMAINS
    """Unseen domains: used only by the held-out prompt split (out-of-distribution tests)."""
    min_len: int = 3
    """Shortest digit list in a prompt."""
    max_len: int = 6
    """Longest digit list in a prompt."""
    style_token: str = STYLE_TOKEN
    """Optional last response word that the true reward ignores and the annotator may favour."""
    n_sft: int = 20000
    """Number of SFT (prompt, response) examples."""
    sft_digit_noise: float = 0.3
    """Probability that each SFT target digit is replaced by a different digit."""
    sft_style_rate: float = 0.2
    """Probability that an SFT response ends with the style token."""
    sft_systematic_domain: str | None = "sort"
    """Domain whose SFT targets are sometimes written in reverse order; None disables it."""
    sft_systematic_rate: float = 0.6
    """Fraction of ``sft_systematic_domain`` SFT targets written in reverse order."""
    n_train_prompts: int = 2048
    """Number of distinct RL training prompts (training domains, train partition)."""
    n_test_prompts: int = 256
    """Number of distinct RL evaluation prompts (training domains, test partition)."""
    n_heldout_prompts: int = 256
    """Number of distinct prompts of the held-out domains."""
    n_pref_train: int = 4000
    """Number of preference pairs labelled with ``annotator_bias`` (train partition)."""
    n_pref_test: int = 500
    """Number of in-distribution test pairs, labelled with ``annotator_bias`` (test partition)."""
    n_pref_shifted: int = 500
    """Number of shifted test pairs, labelled with ``shifted_bias`` (test partition)."""
    annotator_temperature: float = 0.1
    """Temperature T of the annotator's logistic choice; smaller is more decisive."""
    annotator_bias: float = 0.3
    """Reward bonus the annotator gives the style token in the train and test pairs."""
    shifted_bias: float = -0.3
    """Reward bonus the annotator gives the style token in the shifted pairs."""
    shifted_style_on_worse: float | None = None
    """When set, the shifted pairs no longer draw the style token independently: exactly one
    response of each pair carries it, the one with the lower true reward with this
    probability (ties: either). The style feature then anti-correlates with quality on the
    shifted split, so a reward model that learned the annotator's taste for it loses
    accuracy against the ground truth there. None keeps the independent draw."""
    label_noise: float = 0.05
    """Probability that an annotator label is flipped after it is drawn."""
    pair_style_rate: float = 0.5
    """Probability that a preference-pair response ends with the style token."""
    pair_max_error_rate: float = 0.7
    """Each pair response draws a step error rate uniformly from [0, this]."""
    pair_length_error_rate: float = 0.1
    """Probability that a pair response drops its last step or gains an extra one."""
    ppo_prompts: Literal["train", "heldout"] = "train"
    """Prompts PPO trains and evaluates on (no split changes): `train`, the training
    domains' train prompts, evaluated on their test prompts; `heldout`, the held-out
    domains' prompts, halved by a seeded shuffle (PPO trains on one half and evaluates on
    the other): RL on domains that no SFT or preference data covered."""

    def __post_init__(self) -> None:
        """Normalize sequences to tuples and validate every field.

        Raises:
            ValueError: naming the offending field.
        """
        for name in ("domains", "held_out_domains"):
            object.__setattr__(self, name, _as_domain_tuple(name, getattr(self, name)))
        if self.ppo_prompts not in ("train", "heldout"):
            raise ValueError(f"ppo_prompts must be 'train' or 'heldout', got {self.ppo_prompts!r}")
        self._check_domains()
        self._check_numbers()
        self._check_style_token()
        self._check_prompt_space()
        if (
            self.pair_max_error_rate == 0.0
            and self.pair_length_error_rate == 0.0
            and self.pair_style_rate in (0.0, 1.0)
        ):
            raise ValueError(
                "pair_max_error_rate, pair_length_error_rate and pair_style_rate allow only "
                "one response per prompt, so no preference pair can be built; make one vary"
            )

    @property
    def all_domains(self) -> tuple[str, ...]:
        """Training and held-out domains, in ``KNOWN_DOMAINS`` order."""
        used = set(self.domains) | set(self.held_out_domains)
        return tuple(d for d in KNOWN_DOMAINS if d in used)

    @property
    def max_prompt_words(self) -> int:
        """Longest prompt in words: keyword, ``max_len`` digits, ``=``."""
        return self.max_len + 2

    @property
    def max_response_words(self) -> int:
        """Longest response any split contains: one extra step plus the style token."""
        return self.max_len + 2

    def _check_domains(self) -> None:
        overlap = sorted(set(self.domains) & set(self.held_out_domains))
        if overlap:
            raise ValueError(f"held_out_domains must be disjoint from domains; both have {overlap}")
        if (
            self.sft_systematic_domain is not None
            and self.sft_systematic_domain not in self.domains
        ):
            raise ValueError(
                f"sft_systematic_domain={self.sft_systematic_domain!r} is not one of "
                f"domains={self.domains} (use None to disable the systematic error)"
            )

    def _check_numbers(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.min_len < 1:
            raise ValueError(f"min_len must be >= 1, got {self.min_len}")
        if self.max_len < self.min_len:
            raise ValueError(f"max_len={self.max_len} must be >= min_len={self.min_len}")
        for name in _SIZE_FIELDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in _PROBABILITY_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if not (math.isfinite(self.annotator_temperature) and self.annotator_temperature > 0):
            raise ValueError(
                f"annotator_temperature must be finite and > 0, got {self.annotator_temperature}"
            )
        on_worse = self.shifted_style_on_worse
        if on_worse is not None and not 0.0 <= on_worse <= 1.0:
            raise ValueError(f"shifted_style_on_worse must be in [0, 1] or None, got {on_worse}")
        for name in ("annotator_bias", "shifted_bias"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")

    def _check_style_token(self) -> None:
        token = self.style_token
        reserved = (*DIGITS, *KNOWN_DOMAINS, PROMPT_END)
        if not token or token != token.strip() or len(token.split()) != 1 or token in reserved:
            raise ValueError(
                f"style_token must be one word without spaces that is not a digit, a domain "
                f"keyword or {PROMPT_END!r}; got {token!r}"
            )

    def _check_prompt_space(self) -> None:
        # Distinct prompts are drawn by rejection: ask for at most half of what exists, so
        # sampling stays fast and cannot run dry (the test partition holds ~1/8 of prompts).
        per_domain = sum(10**n for n in range(self.min_len, self.max_len + 1))
        space = per_domain * len(self.domains)
        limits = {
            "n_train_prompts": space * (TEST_PARTITION_MODULUS - 1) // TEST_PARTITION_MODULUS,
            "n_test_prompts": space // TEST_PARTITION_MODULUS,
            "n_heldout_prompts": per_domain * len(self.held_out_domains),
        }
        for name, available in limits.items():
            if getattr(self, name) > available // 2:
                raise ValueError(
                    f"{name}={getattr(self, name)} is more than half of the ~{available} "
                    f"distinct prompts its domains and min_len..max_len allow"
                )


def _as_domain_tuple(name: str, value: Sequence[str]) -> tuple[str, ...]:
    """Validate a domain list and return it as a tuple.

    Raises:
        ValueError: naming ``name`` if the list is a bare string, empty, has duplicates or
            unknown domains.
    """
    if isinstance(value, str):
        raise ValueError(f"{name} must be a sequence of domain names, not the string {value!r}")
    domains = tuple(value)
    if not domains:
        raise ValueError(f"{name} must name at least one domain")
    unknown = [d for d in domains if d not in KNOWN_DOMAINS]
    if unknown:
        raise ValueError(f"{name} has unknown domains {unknown}; known: {KNOWN_DOMAINS}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"{name} lists a domain twice: {domains}")
    return domains


def vocabulary(cfg: ToyWorldConfig | None = None) -> tuple[str, ...]:
    """Every word of the world, in a fixed order: digits, domain keywords, ``=``, style token.

    Keywords follow ``KNOWN_DOMAINS`` order whatever order the config lists them in. No
    special tokens: the tokenizer adds its own.

    Args:
        cfg: world config; the default config (all known domains) when None.

    Returns:
        The words, each exactly once.
    """
    cfg = cfg or ToyWorldConfig()
    return (*DIGITS, *cfg.all_domains, PROMPT_END, cfg.style_token)
