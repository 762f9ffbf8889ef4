"""Seeded construction of every toy-world split, and writing them as JSON lines.

Two rules make the splits reproducible and leak-free:

- Each split draws from its own generator, seeded from ``cfg.seed`` and the split's name, so
  changing one split's size never changes another split.
- Prompt texts are partitioned by a stable hash (``is_test_prompt``): the SFT, train-prompt
  and train-preference splits use only train-partition prompts; the test-prompt, test- and
  shifted-preference splits only test-partition prompts. So no test prompt is ever seen in
  training, whatever the sizes. Held-out domains appear only in the held-out split.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Value

from ray_rlhf.data.toyworld.annotator import annotate_pair
from ray_rlhf.data.toyworld.spec import TEST_PARTITION_MODULUS, ToyWorldConfig
from ray_rlhf.data.toyworld.tasks import (
    Task,
    format_prompt,
    format_response,
    solve,
    split_response,
    true_reward,
    wrong_digit,
)

Partition = Literal["train", "test", "any"]

_MAX_DRAWS_PER_ITEM = 64
"""Rejection-sampling budget: draws allowed per requested item before giving up."""

_MAX_PAIR_ATTEMPTS = 1000
"""Redraws of the second response allowed before a pair is declared impossible."""

_STR = Value("string")
PROMPT_FEATURES = Features({"id": _STR, "prompt": _STR, "domain": _STR})
SFT_FEATURES = Features({"id": _STR, "prompt": _STR, "response": _STR, "domain": _STR})
PREFERENCE_FEATURES = Features(
    {
        "id": _STR,
        "prompt": _STR,
        "chosen": _STR,
        "rejected": _STR,
        "domain": _STR,
        "chosen_true_reward": Value("float64"),
        "rejected_true_reward": Value("float64"),
        "chosen_style": Value("bool"),
        "rejected_style": Value("bool"),
        "label_flipped": Value("bool"),
    }
)


@dataclass(frozen=True)
class ToyWorldSplits:
    """Every split of one toy world (HF datasets, in memory)."""

    sft: Dataset
    """Noisy demonstrations: id, prompt, response, domain."""
    train_prompts: Dataset
    """Distinct RL training prompts: id, prompt, domain."""
    test_prompts: Dataset
    """Distinct RL evaluation prompts, disjoint from every training split: id, prompt, domain."""
    heldout_prompts: Dataset
    """Distinct prompts of the held-out domains only: id, prompt, domain."""
    pref_train: Dataset
    """Annotated pairs (``annotator_bias``); columns in ``PREFERENCE_FEATURES``."""
    pref_test: Dataset
    """In-distribution test pairs (``annotator_bias``, test partition)."""
    pref_shifted: Dataset
    """Shifted test pairs (``shifted_bias``, test partition)."""

    def as_dict(self) -> dict[str, Dataset]:
        """The splits by name, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def is_test_prompt(prompt: str) -> bool:
    """Whether a prompt text belongs to the test partition (about 1 in 8, stable hash)."""
    return zlib.crc32(prompt.encode()) % TEST_PARTITION_MODULUS == 0


def sample_task(rng: random.Random, domains: Sequence[str], min_len: int, max_len: int) -> Task:
    """Draw a domain uniformly, a length uniformly in [min_len, max_len], then each digit."""
    domain = rng.choice(domains)
    length = rng.randint(min_len, max_len)
    return Task(domain, tuple(rng.choices(range(10), k=length)))


def noisy_solver_response(rng: random.Random, task: Task, cfg: ToyWorldConfig) -> str:
    """A preference-pair response of random quality.

    Draws a step error rate e ~ U[0, ``pair_max_error_rate``] and replaces each answer digit
    by a wrong one with probability e; with probability ``pair_length_error_rate`` drops the
    last step or appends a random one; appends the style token with ``pair_style_rate``.
    """
    error_rate = rng.uniform(0.0, cfg.pair_max_error_rate)
    digits = [wrong_digit(rng, d) if rng.random() < error_rate else d for d in solve(task)]
    if rng.random() < cfg.pair_length_error_rate:
        digits = digits[:-1] if rng.random() < 0.5 else [*digits, rng.randrange(10)]
    styled = rng.random() < cfg.pair_style_rate
    return format_response(digits, styled=styled, style_token=cfg.style_token)


def sample_response_pair(rng: random.Random, task: Task, cfg: ToyWorldConfig) -> tuple[str, str]:
    """Two different ``noisy_solver_response`` texts for one task.

    Raises:
        RuntimeError: if no different second response turns up after many draws.
    """
    first = noisy_solver_response(rng, task, cfg)
    for _ in range(_MAX_PAIR_ATTEMPTS):
        second = noisy_solver_response(rng, task, cfg)
        if second != first:
            return first, second
    raise RuntimeError(
        f"no second response differing from {first!r} for {format_prompt(task)!r} after "
        f"{_MAX_PAIR_ATTEMPTS} draws; raise pair_max_error_rate or pair_length_error_rate"
    )


def restyle_pair(
    rng: random.Random, task: Task, pair: tuple[str, str], on_worse: float, style_token: str
) -> tuple[str, str]:
    """Put the style token on exactly one response: the worse one with prob. ``on_worse``.

    "Worse" is the lower ``true_reward``; on a tie a fair coin picks the styled response.
    Used for the shifted split when ``ToyWorldConfig.shifted_style_on_worse`` is set.
    """
    prompt = format_prompt(task)
    words = [split_response(text, style_token=style_token)[0] for text in pair]
    rewards = [true_reward(prompt, " ".join(w)) for w in words]
    if rewards[0] == rewards[1]:
        styled = rng.randrange(2)
    else:
        worse = 0 if rewards[0] < rewards[1] else 1
        styled = worse if rng.random() < on_worse else 1 - worse
    texts = [" ".join([*w, style_token] if i == styled else w) for i, w in enumerate(words)]
    return texts[0], texts[1]


def sft_response(rng: random.Random, task: Task, cfg: ToyWorldConfig) -> str:
    """An SFT demonstration with deliberate errors.

    For ``sft_systematic_domain`` the target is written in reverse order with probability
    ``sft_systematic_rate`` (for ``sort``: descending). Then each digit is replaced by a wrong
    one with probability ``sft_digit_noise`` and the style token appended with
    ``sft_style_rate``.
    """
    digits = solve(task)
    if task.domain == cfg.sft_systematic_domain and rng.random() < cfg.sft_systematic_rate:
        digits.reverse()
    digits = [wrong_digit(rng, d) if rng.random() < cfg.sft_digit_noise else d for d in digits]
    styled = rng.random() < cfg.sft_style_rate
    return format_response(digits, styled=styled, style_token=cfg.style_token)


def _split_rng(cfg: ToyWorldConfig, name: str) -> random.Random:
    # A string seed is hashed with SHA-512: stable across runs, processes and platforms.
    return random.Random(f"ray_rlhf.toyworld/{cfg.seed}/{name}")


def _draw_tasks(
    rng: random.Random,
    cfg: ToyWorldConfig,
    n: int,
    *,
    domains: Sequence[str],
    partition: Partition,
    distinct: bool,
    size_field: str,
) -> list[Task]:
    """Draw ``n`` tasks whose prompts lie in ``partition`` (and differ, if ``distinct``).

    Raises:
        ValueError: naming ``size_field`` if the draw budget runs out.
    """
    tasks: list[Task] = []
    seen: set[str] = set()
    for _ in range(_MAX_DRAWS_PER_ITEM * n):
        task = sample_task(rng, domains, cfg.min_len, cfg.max_len)
        prompt = format_prompt(task)
        if partition != "any" and is_test_prompt(prompt) != (partition == "test"):
            continue
        if distinct:
            if prompt in seen:
                continue
            seen.add(prompt)
        tasks.append(task)
        if len(tasks) == n:
            return tasks
    raise ValueError(
        f"{size_field}={n}: found only {len(tasks)} suitable prompts; lower it or widen "
        f"min_len..max_len or the domains"
    )


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


def _prompt_split(
    cfg: ToyWorldConfig, name: str, n: int, domains: Sequence[str], partition: Partition
) -> Dataset:
    tasks = _draw_tasks(
        _split_rng(cfg, name),
        cfg,
        n,
        domains=domains,
        partition=partition,
        distinct=True,
        size_field=f"n_{name}",
    )
    columns = {
        "id": _ids(name.removesuffix("_prompts"), n),
        "prompt": [format_prompt(t) for t in tasks],
        "domain": [t.domain for t in tasks],
    }
    return Dataset.from_dict(columns, features=PROMPT_FEATURES)


def _sft_split(cfg: ToyWorldConfig) -> Dataset:
    rng = _split_rng(cfg, "sft")
    tasks = _draw_tasks(
        rng,
        cfg,
        cfg.n_sft,
        domains=cfg.domains,
        partition="train",
        distinct=False,
        size_field="n_sft",
    )
    columns = {
        "id": _ids("sft", cfg.n_sft),
        "prompt": [format_prompt(t) for t in tasks],
        "response": [sft_response(rng, t, cfg) for t in tasks],
        "domain": [t.domain for t in tasks],
    }
    return Dataset.from_dict(columns, features=SFT_FEATURES)


def _preference_split(
    cfg: ToyWorldConfig, name: str, n: int, partition: Partition, bias: float
) -> Dataset:
    rng = _split_rng(cfg, name)
    tasks = _draw_tasks(
        rng,
        cfg,
        n,
        domains=cfg.domains,
        partition=partition,
        distinct=False,
        size_field=f"n_{name}",
    )
    rows = []
    for row_id, task in zip(_ids(name, n), tasks, strict=True):
        prompt = format_prompt(task)
        y1, y2 = sample_response_pair(rng, task, cfg)
        if name == "pref_shifted" and cfg.shifted_style_on_worse is not None:
            y1, y2 = restyle_pair(rng, task, (y1, y2), cfg.shifted_style_on_worse, cfg.style_token)
        chosen, rejected, info = annotate_pair(
            rng,
            prompt,
            y1,
            y2,
            bias=bias,
            temperature=cfg.annotator_temperature,
            label_noise=cfg.label_noise,
            style_token=cfg.style_token,
        )
        rows.append(
            {
                "id": row_id,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "domain": task.domain,
                "chosen_true_reward": info.chosen_true_reward,
                "rejected_true_reward": info.rejected_true_reward,
                "chosen_style": info.chosen_style,
                "rejected_style": info.rejected_style,
                "label_flipped": info.label_flipped,
            }
        )
    return Dataset.from_list(rows, features=PREFERENCE_FEATURES)


def build_splits(cfg: ToyWorldConfig) -> ToyWorldSplits:
    """Build every split of the world ``cfg`` describes; deterministic in ``cfg``.

    Raises:
        ValueError: if a split's prompts cannot be drawn (names the size field).
    """
    return ToyWorldSplits(
        sft=_sft_split(cfg),
        train_prompts=_prompt_split(
            cfg, "train_prompts", cfg.n_train_prompts, cfg.domains, "train"
        ),
        test_prompts=_prompt_split(cfg, "test_prompts", cfg.n_test_prompts, cfg.domains, "test"),
        heldout_prompts=_prompt_split(
            cfg, "heldout_prompts", cfg.n_heldout_prompts, cfg.held_out_domains, "any"
        ),
        pref_train=_preference_split(
            cfg, "pref_train", cfg.n_pref_train, "train", cfg.annotator_bias
        ),
        pref_test=_preference_split(cfg, "pref_test", cfg.n_pref_test, "test", cfg.annotator_bias),
        pref_shifted=_preference_split(
            cfg, "pref_shifted", cfg.n_pref_shifted, "test", cfg.shifted_bias
        ),
    )


def write_splits(splits: ToyWorldSplits, out_dir: str | Path) -> dict[str, Path]:
    """Write each split as ``<out_dir>/<name>.jsonl`` (one JSON object per line).

    Floats are written exactly (``json`` repr), so the files load back, with
    ``datasets.load_dataset("json", data_files=...)``, to identical rows.

    Returns:
        The written path of each split, by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, dataset in splits.as_dict().items():
        paths[name] = out / f"{name}.jsonl"
        with paths[name].open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in dataset.to_list())
    return paths
