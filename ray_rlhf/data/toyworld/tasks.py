"""Domains, prompt and response text, and the ground-truth rewards of the toy world.

A task is a domain and a digit list; its answer is a digit list of the same length. A
response is a sequence of *steps* (one answer word each) optionally followed by the style
token, so every response has a known per-step reward and a known sequence reward.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import NamedTuple

from ray_rlhf.data.toyworld.spec import DIGITS, KNOWN_DOMAINS, PROMPT_END, STYLE_TOKEN


class Task(NamedTuple):
    """One problem: a domain keyword and its input digits."""

    domain: str
    digits: tuple[int, ...]


def _running_odd_count(digits: Sequence[int]) -> list[int]:
    return [c % 10 for c in accumulate(d % 2 for d in digits)]


DOMAIN_SOLVERS: dict[str, Callable[[Sequence[int]], list[int]]] = {
    "sort": lambda ds: sorted(ds),
    "rev": lambda ds: list(reversed(ds)),
    "copy": lambda ds: list(ds),
    "max": lambda ds: list(accumulate(ds, max)),
    "sum": lambda ds: [s % 10 for s in accumulate(ds)],
    "count": _running_odd_count,
    "min": lambda ds: list(accumulate(ds, min)),
    "sortd": lambda ds: sorted(ds, reverse=True),
}
"""Each domain's answer as a function of the input digits: ascending sort, reverse, copy,
running max, running sum mod 10, running count of odd digits mod 10, running min, descending
sort. Keys are exactly ``spec.KNOWN_DOMAINS``."""


def solve(task: Task) -> list[int]:
    """Return the correct answer digits of ``task`` (same length as its input)."""
    return DOMAIN_SOLVERS[task.domain](task.digits)


def format_prompt(task: Task) -> str:
    """Render a task as prompt text, e.g. ``Task("sort", (3, 1, 2))`` -> ``"sort 3 1 2 ="``."""
    return " ".join((task.domain, *map(str, task.digits), PROMPT_END))


def format_response(digits: Sequence[int], *, styled: bool, style_token: str = STYLE_TOKEN) -> str:
    """Render answer digits as response text, with the style token last if ``styled``."""
    words = [str(d) for d in digits]
    if styled:
        words.append(style_token)
    return " ".join(words)


def parse_prompt(prompt: str) -> Task:
    """Parse prompt text such as ``"sort 3 1 2 ="`` into a ``Task``.

    Args:
        prompt: words separated by whitespace: a known domain keyword, one or more single
            digits, then ``=``.

    Returns:
        The task.

    Raises:
        ValueError: naming what is wrong with the prompt.
    """
    words = prompt.split()
    if len(words) < 3:
        raise ValueError(
            f"prompt {prompt!r} is too short: expected '<domain> <digits...> {PROMPT_END}'"
        )
    domain, *digit_words, end = words
    if domain not in KNOWN_DOMAINS:
        raise ValueError(f"prompt {prompt!r} has unknown domain {domain!r}; known: {KNOWN_DOMAINS}")
    if end != PROMPT_END:
        raise ValueError(f"prompt {prompt!r} must end with {PROMPT_END!r}, not {end!r}")
    for position, word in enumerate(digit_words, start=1):
        if word not in DIGITS:
            raise ValueError(f"prompt {prompt!r}: word {position} ({word!r}) is not a digit 0-9")
    return Task(domain, tuple(int(w) for w in digit_words))


def split_response(response: str, *, style_token: str = STYLE_TOKEN) -> tuple[list[str], bool]:
    """Split a response into its step words and whether it ends with the style token.

    Only one trailing style token is removed; any other word, style tokens included, is a
    step (and scores 0 unless it is the right digit).
    """
    words = response.split()
    if words and words[-1] == style_token:
        return words[:-1], True
    return words, False


def has_style(response: str, *, style_token: str = STYLE_TOKEN) -> bool:
    """Whether the response ends with the style token: the world's prompt-free feature."""
    return split_response(response, style_token=style_token)[1]


def step_rewards(prompt: str, response: str, *, style_token: str = STYLE_TOKEN) -> list[float]:
    """Ground-truth reward of every response step (answer word).

    Args:
        prompt: prompt text (see ``parse_prompt``).
        response: response text; a trailing style token is not a step.
        style_token: the world's style token.

    Returns:
        One entry per step: 1.0 if the word is the target digit at that position, else 0.0
        (wrong digit, non-digit word, or a step beyond the target's length).

    Raises:
        ValueError: if the prompt is malformed.
    """
    target = [str(d) for d in solve(parse_prompt(prompt))]
    steps, _ = split_response(response, style_token=style_token)
    return [float(i < len(target) and word == target[i]) for i, word in enumerate(steps)]


def _sequence_reward(prompt: str, response: str, style_token: str) -> float:
    rewards = step_rewards(prompt, response, style_token=style_token)
    target_len = len(parse_prompt(prompt).digits)
    return sum(rewards) / max(target_len, len(rewards))


def true_reward(prompt: str, response: str) -> float:
    """Ground-truth sequence reward r*(x, y) in [0, 1], for the default style token.

    (#correct steps) / max(target length, #steps): missing steps and extra steps both cost;
    a trailing style token changes nothing. This exact signature is the rule-reward form
    (``"ray_rlhf.data.toyworld:true_reward"``); for another style token use ``true_rewards``.

    Raises:
        ValueError: if the prompt is malformed.
    """
    return _sequence_reward(prompt, response, STYLE_TOKEN)


def true_rewards(
    prompts: Sequence[str], responses: Sequence[str], *, style_token: str = STYLE_TOKEN
) -> list[float]:
    """``true_reward`` of each (prompt, response) pair.

    Raises:
        ValueError: if the sequences differ in length or a prompt is malformed.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return [_sequence_reward(p, r, style_token) for p, r in zip(prompts, responses, strict=True)]


def evaluate_responses(
    prompts: Sequence[str], responses: Sequence[str], *, style_token: str = STYLE_TOKEN
) -> dict[str, float]:
    """Summarize responses against the ground truth.

    Returns:
        ``true_reward`` (mean), ``exact_match`` (fraction with reward 1), ``style_rate``
        (fraction ending with the style token), and ``true_reward/<domain>`` (mean per
        domain present).

    Raises:
        ValueError: if there are no responses, the lengths differ or a prompt is malformed.
    """
    if not prompts:
        raise ValueError("evaluate_responses needs at least one (prompt, response) pair")
    rewards = true_rewards(prompts, responses, style_token=style_token)
    by_domain: dict[str, list[float]] = {}
    for prompt, reward in zip(prompts, rewards, strict=True):
        by_domain.setdefault(parse_prompt(prompt).domain, []).append(reward)
    n = len(rewards)
    metrics = {
        "true_reward": sum(rewards) / n,
        "exact_match": sum(r == 1.0 for r in rewards) / n,
        "style_rate": sum(has_style(r, style_token=style_token) for r in responses) / n,
    }
    for domain in sorted(by_domain):
        metrics[f"true_reward/{domain}"] = sum(by_domain[domain]) / len(by_domain[domain])
    return metrics


def wrong_digit(rng: random.Random, digit: int) -> int:
    """A uniformly drawn digit different from ``digit``."""
    return (digit + rng.randint(1, 9)) % 10
