"""`response_logits`: the LM head applied to response positions only gives the rows, and the
gradients, of the full logits (a tiny tied-embedding Llama built in memory)."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.algo.tokens import logit_positions, response_token_logprobs, token_logprobs
from ray_rlhf.learner.logits import response_logits


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _rows():
    """3 right-padded rows of 7: prompt lengths 2, 4, 3; responses of 3, 3 and 1 tokens."""
    ids = torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    attn = torch.zeros(3, 7, dtype=torch.bool)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for row, (prompt, response) in enumerate([(2, 3), (4, 3), (3, 1)]):
        attn[row, : prompt + response] = True
        mask[row, prompt : prompt + response] = True
    return ids, attn, mask


def test_response_logits_are_the_full_logits_rows(model):
    ids, attn, mask = _rows()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attn.long()).logits  # (B, T, V)
        got = response_logits(model, model, ids, attn, mask)
    assert got.shape == (int(mask[:, 1:].sum()), 50)
    torch.testing.assert_close(got, full[logit_positions(mask)], rtol=1e-5, atol=1e-6)
    assert not model.get_output_embeddings()._forward_pre_hooks  # the hook is gone


def test_response_logprob_gradients_equal_the_full_forward(model):
    ids, attn, mask = _rows()
    weights = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    full = model(input_ids=ids, attention_mask=attn.long()).logits
    expected = grads((token_logprobs(full, ids) * mask * weights).sum())
    logits = response_logits(model, model, ids, attn, mask)
    got = grads((response_token_logprobs(logits, ids, mask) * weights).sum())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_hook_is_removed_when_the_forward_fails(model):
    ids, attn, mask = _rows()
    with pytest.raises(RuntimeError, match="LM head got hidden states"):
        response_logits(model, model, ids, attn, mask[:, :-1])  # positions of the wrong T
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_a_model_without_a_separate_head_selects_from_the_full_logits(model):
    class NoHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def get_output_embeddings(self) -> None:
            return None

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    ids, attn, mask = _rows()
    wrapped = NoHead()
    with torch.no_grad():
        got = response_logits(wrapped, wrapped, ids, attn, mask)
        full = model(input_ids=ids, attention_mask=attn.long()).logits
    torch.testing.assert_close(got, full[logit_positions(mask)])
