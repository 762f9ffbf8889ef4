"""The SmolLM2 example's prompt extraction on hand-written chitchat conversations."""

from __future__ import annotations

import json
from pathlib import Path

from examples.smollm2.prepare import (
    MAX_TURN_CHARS,
    chat_prompts,
    prompt_messages,
    turn_texts,
    write_jsonl,
)


def conversation(*turns: list[str]) -> dict:
    """A conversation in chitchat-dataset's layout: one list of utterances per turn."""
    return {"messages": [[{"text": text, "sender": "s"} for text in turn] for turn in turns]}


def test_turn_texts_joins_utterances_and_whitespace() -> None:
    conv = conversation(["Hello", "how are  you?"], ["fine\nthanks"])
    assert turn_texts(conv) == ["Hello how are you?", "fine thanks"]


def test_prompt_messages_alternate_roles_and_end_with_a_question() -> None:
    assert prompt_messages(["hi", "hey", "how are you?", "ignored"]) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "how are you?"},
    ]
    assert prompt_messages(["hi", "hey", "fine."]) is None  # no question
    assert prompt_messages(["hi", "how are you?"]) is None  # too few turns
    assert prompt_messages(["hi", "", "why?"]) is None  # empty turn
    assert prompt_messages(["x" * (MAX_TURN_CHARS + 1), "hey", "why?"]) is None


def test_chat_prompts_are_seeded_deduplicated_and_capped(tmp_path: Path) -> None:
    convs = {f"c{i}": conversation(["hi"], ["hey"], [f"question {i}?"]) for i in range(10)}
    convs["dup"] = convs["c3"]
    convs["bad"] = conversation(["hi"], ["hey"], ["no question"])
    rows = chat_prompts(convs, count=5, seed=1)
    assert len(rows) == 5
    assert rows == chat_prompts(convs, count=5, seed=1)
    assert "bad" not in {row["id"] for row in rows}
    assert len(chat_prompts(convs, count=100)) == 10  # the duplicate is kept once

    path = write_jsonl(rows, tmp_path / "sub" / "prompts.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    assert not (tmp_path / "sub" / "prompts.jsonl.partial").exists()


def test_pairs_never_reject_with_a_rows_own_reply():
    from examples.smollm2.pairs import make_pairs

    rows = [
        {"id": str(i), "messages": [{"role": "user", "content": f"q{i}"},
                                    {"role": "assistant", "content": f"a{i}"}]}
        for i in range(5)
    ]
    pairs = make_pairs(rows, seed=1)
    assert [(p["id"], p["prompt"], p["chosen"]) for p in pairs] == [
        (str(i), f"q{i}", f"a{i}") for i in range(5)
    ]
    rejected = [p["rejected"] for p in pairs]
    assert sorted(rejected) == [f"a{i}" for i in range(5)]  # every reply used once
    assert all(p["rejected"] != p["chosen"] for p in pairs)
    assert make_pairs(rows, seed=1) == pairs  # seeded
