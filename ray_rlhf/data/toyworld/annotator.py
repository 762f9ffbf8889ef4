"""The simulated preference annotator of the toy world.

The annotator prefers y1 over y2 with probability

    P(y1 > y2) = sigmoid((r*(y1) - r*(y2) + bias * (b(y1) - b(y2))) / temperature)

where r* is ``tasks.true_reward`` and b is ``tasks.has_style`` (1 if the response ends with
the style token). ``bias`` plants a prompt-free preference: the train split uses one sign,
the shifted split the other (docs/algorithms.md, "The toy world"). After the label is drawn it is
flipped with probability ``label_noise``, so some labels are wrong on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ray_rlhf.data.toyworld.spec import STYLE_TOKEN
from ray_rlhf.data.toyworld.tasks import has_style, true_rewards


class UniformSource(Protocol):
    """Anything with ``random() -> float`` in [0, 1): ``random.Random``, ``numpy`` Generator."""

    def random(self) -> float:
        """Return a uniform draw in [0, 1)."""
        ...


@dataclass(frozen=True)
class AnnotationInfo:
    """What the annotator knew and did for one pair, in chosen/rejected order."""

    chosen_true_reward: float
    """r* of the chosen response."""
    rejected_true_reward: float
    """r* of the rejected response."""
    chosen_style: bool
    """Whether the chosen response ends with the style token."""
    rejected_style: bool
    """Whether the rejected response ends with the style token."""
    label_flipped: bool
    """Whether label noise flipped the drawn label (the choice then goes against P)."""
    chosen_probability: float
    """P(chosen > rejected) under the noise-free annotator model."""


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def preference_probability(
    reward_1: float,
    reward_2: float,
    style_1: bool,
    style_2: bool,
    *,
    bias: float,
    temperature: float,
) -> float:
    """Noise-free probability that the annotator prefers response 1 over response 2.

    Args:
        reward_1: true reward r*(y1).
        reward_2: true reward r*(y2).
        style_1: whether y1 ends with the style token.
        style_2: whether y2 ends with the style token.
        bias: reward bonus for the style token (negative: a penalty).
        temperature: > 0; smaller is more decisive.

    Returns:
        sigmoid((reward_1 - reward_2 + bias * (style_1 - style_2)) / temperature).

    Raises:
        ValueError: if ``temperature`` is not > 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    margin = reward_1 - reward_2 + bias * (int(style_1) - int(style_2))
    return _sigmoid(margin / temperature)


def annotate_pair(
    rng: UniformSource,
    prompt: str,
    y1: str,
    y2: str,
    *,
    bias: float,
    temperature: float,
    label_noise: float,
    style_token: str = STYLE_TOKEN,
) -> tuple[str, str, AnnotationInfo]:
    """Label one pair the way the simulated annotator would.

    Draws "y1 wins" with ``preference_probability``, then flips it with probability
    ``label_noise``. Consumes exactly two uniform draws from ``rng``.

    Args:
        rng: source of uniform draws.
        prompt: prompt text both responses answer.
        y1: first response text.
        y2: second response text.
        bias: style-token bonus (see ``preference_probability``).
        temperature: annotator temperature, > 0.
        label_noise: flip probability in [0, 1].
        style_token: the world's style token.

    Returns:
        ``(chosen, rejected, info)``.

    Raises:
        ValueError: if ``label_noise`` is not in [0, 1], ``temperature`` is not > 0 or the
            prompt is malformed.
    """
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    rewards = true_rewards((prompt, prompt), (y1, y2), style_token=style_token)
    styles = (has_style(y1, style_token=style_token), has_style(y2, style_token=style_token))
    p_first = preference_probability(*rewards, *styles, bias=bias, temperature=temperature)
    first_wins = rng.random() < p_first
    flipped = rng.random() < label_noise
    first_wins ^= flipped
    win, lose = (0, 1) if first_wins else (1, 0)
    info = AnnotationInfo(
        chosen_true_reward=rewards[win],
        rejected_true_reward=rewards[lose],
        chosen_style=styles[win],
        rejected_style=styles[lose],
        label_flipped=flipped,
        chosen_probability=p_first if first_wins else 1.0 - p_first,
    )
    return ((y1, y2)[win], (y1, y2)[lose], info)
