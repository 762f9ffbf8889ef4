"""A word-level tokenizer built in code and saved as a normal HF tokenizer.

The toy world has a small fixed vocabulary of whitespace-separated words, so one word is one
token: ids are easy to read in tests and the tokenizer needs no training files. The result is
a `PreTrainedTokenizerFast` that `save_pretrained` writes as `tokenizer.json`, which both
`AutoTokenizer.from_pretrained` and vLLM load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
"""Special tokens by HF attribute name; they take ids 0..3 in this order."""

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %} {% endif -%}"
    "{{- message['content'] -}}"
    "{%- if message['role'] == 'assistant' %} {{ eos_token }}{% endif -%}"
    "{%- endfor -%}"
)
"""Renders the messages' contents joined by single spaces, each assistant turn followed by
" </s>". `add_generation_prompt` adds nothing: the toy prompts already end with "=".
The rendering has no BOS; tokenize it with `tokenizer(text)`, which prepends BOS."""

_WORDPIECE_PREFIX = "##"


def _check_words(words: Sequence[str]) -> list[str]:
    """Returns `words` as a list after checking each can be a single word-level token."""
    if isinstance(words, str):
        raise TypeError("words must be a sequence of words, not one string")
    specials = set(SPECIAL_TOKENS.values())
    seen: set[str] = set()
    for word in words:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"word {word!r}: words must be non-empty and contain no whitespace")
        if word in specials:
            raise ValueError(f"word {word!r} is a special token; it is added automatically")
        if word.startswith(_WORDPIECE_PREFIX):
            raise ValueError(
                f"word {word!r}: words may not start with {_WORDPIECE_PREFIX!r} "
                "(the decoder would glue it to the previous word)"
            )
        if word in seen:
            raise ValueError(f"word {word!r} appears twice")
        seen.add(word)
    return list(words)


def _backend(words: list[str], add_bos: bool) -> Tokenizer:
    """Builds the `tokenizers` pipeline: WordLevel + whitespace split + BOS + space join."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *words])}
    unk = SPECIAL_TOKENS["unk_token"]
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, vocab[bos])]
        )
    # WordPiece's decoder puts one space between tokens that do not start with its prefix
    # (words are checked not to); cleanup=False keeps e.g. "1 ." from becoming "1.".
    backend.decoder = decoders.WordPiece(prefix=_WORDPIECE_PREFIX, cleanup=False)
    return backend


def build_word_tokenizer(
    words: Sequence[str],
    *,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    add_bos: bool = True,
    padding_side: Literal["left", "right"] = "right",
) -> PreTrainedTokenizerFast:
    """Builds a word-level HF tokenizer: one whitespace-separated word is one token.

    Ids: `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, then `words` in order. Unknown words
    encode to `<unk>`. Single sequences get a leading BOS when `add_bos` (no EOS is added).

    Args:
        words: The vocabulary, without special tokens; unique, non-empty, no whitespace.
        chat_template: Jinja chat template stored with the tokenizer (None for none).
        add_bos: Prepend `<s>` when encoding with `add_special_tokens=True` (the default).
        padding_side: Side `tokenizer.pad` / `tokenizer(..., padding=True)` pads on.

    Returns:
        A `PreTrainedTokenizerFast` with pad/bos/eos/unk tokens set.

    Raises:
        ValueError: If a word is empty, has whitespace, repeats, or is a special token.
    """
    backend = _backend(_check_words(words), add_bos)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=chat_template,
        padding_side=padding_side,
        **SPECIAL_TOKENS,
    )
