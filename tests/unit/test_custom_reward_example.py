"""The example rule (examples/custom_reward/rule.py), loaded by its file spec as
`reward.rule` loads it and scored as the reward actors score it (`RuleSource`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_rlhf.reward.rules import RuleSource, is_batched, load_rule, rendered_keyword

SPEC = f"{Path(__file__).parents[2] / 'examples' / 'custom_reward' / 'rule.py'}:reward"

# (prompt as written, response, score by hand: 0.5 x length match + 0.5 x share of the
# response's items drawn from the prompt's list; only 2 x the length part for a non-permutation)
ROWS = [
    ("sort 3 1 2 =", "1 2 3", 0.5 + 0.5),
    ("sort 3 1 2 =", "1 2 9 9", 0.5 * 3 / 4 + 0.5 * 2 / 4),
    ("sort 3 1 2 =", "3 3 3", 0.5 + 0.5 * 1 / 3),  # 3 appears once in the prompt
    ("sum 3 1 2 =", "6", 2 * 0.5 * 1 / 3),  # not a permutation: the length only
    ("rev 1 2 =", "", -1.0),
]


def rendered(prompt: str) -> str:
    """The prompt after a chat template, as the model reads it."""
    return f"<|system|> you are a helpful bot <|user|> {prompt} <|assistant|>"


def test_the_example_loads_as_a_per_row_rule_that_takes_the_rendered_prompt():
    rule = load_rule(SPEC)
    assert not is_batched(rule)
    assert rendered_keyword(rule) == "rendered_prompt"


@pytest.mark.parametrize(("prompt", "response", "expected"), ROWS)
def test_the_example_scores_hand_made_rows(prompt, response, expected):
    rule = load_rule(SPEC)
    assert rule(prompt, response) == pytest.approx(expected, abs=1e-12)
    assert rule(prompt, response, rendered_prompt=rendered(prompt)) == pytest.approx(
        expected, abs=1e-12
    )


def test_the_reward_actors_pass_the_written_prompt_and_the_rendered_one():
    prompts, responses, expected = (list(column) for column in zip(*ROWS, strict=True))
    source = RuleSource(SPEC)
    # No chat template: the model read the prompts as written.
    plain = source.score_texts(prompts, responses, [])
    # A chat template: `prompt` stays the written one (the rule parses it), the rendered
    # text goes to `rendered_prompt`.
    chat = source.score_texts([rendered(p) for p in prompts], responses, [], prompts)
    assert plain.tolist() == pytest.approx(expected, abs=1e-12)
    assert chat.tolist() == pytest.approx(expected, abs=1e-12)
