"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A random tiny Llama policy with the toy world's word tokenizer (an HF dir)."""
    from ray_rlhf.data.toyworld import vocabulary
    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model
    from ray_rlhf.models.tokenizer import build_word_tokenizer

    out = tmp_path_factory.mktemp("base") / "policy"
    return write_tiny_model(out, build_word_tokenizer(vocabulary()), TinyModelSpec())
