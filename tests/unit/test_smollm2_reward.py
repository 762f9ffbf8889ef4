"""The SmolLM2 example's rule reward on hand-written replies (examples/smollm2/reward.py)."""

from __future__ import annotations

import pytest

from examples.smollm2.reward import reward


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("I'm doing well, thanks!", 0.5 + 0.3 + 0.2),  # ends, short, polite
        ("I like pizza.", 0.5 + 0.3),  # ends, short
        ("I like pizza and", 0.3),  # cut off mid-sentence
        ('"Sure, please do."', 0.5 + 0.3 + 0.2),  # the closing quote is skipped
        ("(Really?)", 0.5 + 0.3),  # so is the bracket
        ("Thanksgiving is fun.", 0.5 + 0.3),  # "thanks" only as a word
        (" ".join(["word"] * 40), 0.3 * 20 / 40),  # long and unfinished
        (" ".join(["word"] * 39) + " glad.", 0.5 + 0.3 * 20 / 40 + 0.2),
        ("", -1.0),
        ("  \n", -1.0),
    ],
)
def test_reward_values(response: str, expected: float) -> None:
    assert reward("How are you?", response) == pytest.approx(expected, abs=1e-12)


def test_reward_ignores_the_prompt() -> None:
    assert reward("", "Nice to meet you.") == reward("Who are you?", "Nice to meet you.") == 1.0
