"""How many rows a learner's training forward can take: the automatic `ppo.micro_batch_size`.

A training forward keeps, for the backward pass, activations that grow with the rows of the
micro-batch, the sequence length and the model's width and depth, plus the LM head's logits
over the response tokens (a full vocabulary per token). On a real model this, not the
weights, decides whether a learner fits in memory: SmolLM2-135M keeps about 0.65 GiB per
row of 407 tokens (151 prompt + 256 response), so the toy world's 32 rows per forward would
need about 20 GiB per learner.

`activation_bytes_per_row` estimates it for a decoder-only transformer (Llama-style blocks;
PyTorch's scaled-dot-product attention, which keeps no T x T probabilities):

    per token and layer   10 h + 4 i          values (projections, norms, residual, MLP)
    per response token    3 V                 (logits, their log-softmax, its gradient)

with h the hidden size, i the MLP width and V the vocabulary, in the model's dtype. Measured
on SmolLM2-135M (fp32, one forward and backward after a warm-up, peak RSS growth): 0.58 and
0.65 GiB per row at 407 tokens with 256 response tokens (1 and 2 rows) vs 0.68 estimated;
0.28 GiB per row at 183 tokens with 32 response tokens (4 and 8 rows) vs 0.26 estimated.
"""

from __future__ import annotations

from typing import Any

ACTIVATION_BUDGET_BYTES = 2 * 2**30
"""Activation memory one training forward may use when `ppo.micro_batch_size` is unset."""
MAX_AUTO_MICRO_BATCH = 32
"""The most rows per forward chosen automatically (small models: fewer, larger forwards)."""


def activation_bytes_per_row(
    config: Any,
    tokens: int,
    response_tokens: int,
    dtype_bytes: int,
    *,
    checkpointed: bool = False,
) -> int:
    """Estimated bytes one row keeps for the backward pass of a training forward.

    Args:
        config: The model's HF config (`hidden_size`, `num_hidden_layers`, `vocab_size`;
            `intermediate_size`, 4 x hidden when absent).
        tokens: Prompt plus response tokens of a row.
        response_tokens: Tokens the LM head is applied to.
        dtype_bytes: 4 for float32, 2 for bfloat16.
        checkpointed: Gradient checkpointing: each layer keeps only its input (h values
            per token) and one layer's activations are recomputed at a time.
    """
    hidden = int(config.hidden_size)
    mlp = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    layers, per_layer = int(config.num_hidden_layers), 10 * hidden + 4 * mlp
    per_token = layers * hidden + per_layer if checkpointed else layers * per_layer
    values = tokens * per_token + response_tokens * 3 * int(config.vocab_size)
    return values * dtype_bytes


def auto_micro_batch(rows: int, row_bytes: int, budget: int = ACTIVATION_BUDGET_BYTES) -> int:
    """The largest divisor of `rows` (a learner's share of a minibatch), at most
    `MAX_AUTO_MICRO_BATCH`, whose rows fit `budget`; 1 when not even one row does."""
    fit = max(1, min(MAX_AUTO_MICRO_BATCH, budget // max(row_bytes, 1)))
    return max(d for d in range(1, min(fit, rows) + 1) if rows % d == 0)
