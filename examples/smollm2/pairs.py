"""Preference pairs from the example's chat prompts, for `ray-rlhf train-rm` on SmolLM2.

Run from the repository root after `python -m examples.smollm2.prepare`:

    .venv/bin/python -m examples.smollm2.pairs [--out runs/examples/smollm2]

Reads `<out>/prompts.jsonl` (chitchat conversations: user, assistant, user) and writes
`<out>/pairs.jsonl`, one pair per conversation: the prompt is the conversation's first user
turn, `chosen` the reply that followed it in the conversation, `rejected` the reply from
another conversation (a seeded derangement, so no reply is paired with its own opener). A
reward model trained on it learns whether a reply answers its message, a real task with
real text; it is the input of the real-model example in docs/reward_models.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

from examples.smollm2.prepare import DEFAULT_OUT, SEED

logger = logging.getLogger("examples.smollm2.pairs")


def make_pairs(prompts: list[dict[str, Any]], seed: int = SEED) -> list[dict[str, str]]:
    """One pair per prompt row: its first user turn, its own reply, another row's reply.

    Args:
        prompts: Rows of prompts.jsonl (`id`, `messages` with at least two turns).
    """
    openers = [(row["id"], row["messages"][0]["content"], row["messages"][1]["content"])
               for row in prompts]
    order = list(range(len(openers)))
    random.Random(seed).shuffle(order)
    others = order[1:] + order[:1]  # a cycle over a shuffled order: never a row's own reply
    other_of = dict(zip(order, others, strict=True))
    pairs = []
    for i, (row_id, user, reply) in enumerate(openers):
        rejected = openers[other_of[i]][2]
        if rejected.strip() == reply.strip():
            continue
        pairs.append({"id": row_id, "prompt": user, "chosen": reply, "rejected": rejected})
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[pairs] %(message)s")
    source = args.out / "prompts.jsonl"
    if not source.is_file():
        logger.error("%s not found: run python -m examples.smollm2.prepare first", source)
        return 2
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    pairs = make_pairs(rows)
    target = args.out / "pairs.jsonl"
    partial = target.with_name(target.name + ".partial")
    partial.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    partial.rename(target)
    logger.info("%d pairs -> %s", len(pairs), target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
