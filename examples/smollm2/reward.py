"""The SmolLM2 example's rule reward: `reward.rule=examples/smollm2/reward.py:reward`.

A chat reply scores well when it is a finished sentence, short and friendly, the way a
person answers in a chat. Three parts, adding up to at most 1:

- 0.5 when the reply ends a sentence (`.`, `!`, `?` or `…`, before any closing quotes or
  brackets). With 32 response tokens a reply that rambles is cut off mid-sentence and gets
  nothing here, so this part also rewards finishing early;
- up to 0.3 for brevity: the full 0.3 up to `CONCISE_WORDS` words, then 0.3 x
  `CONCISE_WORDS` / words;
- 0.2 when the reply holds a polite or warm word (`POLITE`: thanks, please, glad, ...).

An empty reply scores -1. The rule reads only the reply: a chat prompt asks nothing
checkable, so the rule is about form, not content. Like every rule reward it can be gamed
(a policy that learns "Thanks!" gets 1.0); the KL penalty toward the starting model keeps
that in check for a few iterations, which is all this example runs.
"""

from __future__ import annotations

import re

SENTENCE_ENDS = (".", "!", "?", "…")
"""Characters that end a sentence."""
CLOSERS = "\"')]*”’"
"""Characters allowed after the sentence end (closing quotes, brackets, markdown)."""
CONCISE_WORDS = 20
"""Replies of up to this many words get the whole brevity part."""
POLITE = re.compile(
    r"\b(thanks|thank you|please|glad|happy to|sorry|appreciate|welcome|nice to)\b",
    re.IGNORECASE,
)
"""Words that make a reply polite or warm."""


def reward(prompt: str, response: str) -> float:
    """Scores one chat reply in [-1, 1] (module docstring).

    Args:
        prompt: The last user message of the conversation (unused: the rule judges the
            reply's form only).
        response: The model's reply, special tokens removed.

    Returns:
        0.5 (ends a sentence) + up to 0.3 (brevity) + 0.2 (polite); -1.0 when empty.

    Example:
        `reward("How are you?", "I'm doing well, thanks!")` is 0.5 + 0.3 + 0.2 = 1.0.
    """
    text = response.strip()
    if not text:
        return -1.0
    ends = 0.5 if text.rstrip(CLOSERS).endswith(SENTENCE_ENDS) else 0.0
    brevity = 0.3 * min(1.0, CONCISE_WORDS / len(text.split()))
    polite = 0.2 if POLITE.search(text) else 0.0
    return ends + brevity + polite
