"""A causal LM as a function of a subset of its parameters, for the meta-RM inner loop.

The inner loop of `ray_rlhf.learner.meta_rm` adapts copies θ of some of the policy's
parameters and must stay differentiable in them, so the model is never modified: every
forward is `torch.func.functional_call` with θ substituted and the frozen rest read from
the module. Which parameters are θ is `adapted_parameter_names` (docs/meta_rm.md, "What
the inner loop adapts").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ray_rlhf.algo.masking import masked_sum
from ray_rlhf.algo.tokens import token_logprobs

Adapt = Literal["last_layers", "full"]


def adapted_parameter_names(model: nn.Module, adapt: Adapt, layers: int) -> list[str]:
    """Names of the parameters the inner loop adapts, in `named_parameters` order.

    "last_layers": the last `layers` blocks of the model's decoder-layer list (its longest
    `nn.ModuleList`) and every parameter registered after them (final norm, LM head).
    "full": every parameter. The input embedding stays frozen under "last_layers".

    Raises:
        ValueError: If the model has no layer list or fewer than `layers` layers.
    """
    names = [name for name, _ in model.named_parameters()]
    if adapt == "full":
        return names
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no decoder-layer list to adapt")
    prefix, blocks = max(lists, key=lambda item: len(item[1]))
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"meta.adapt_layers={layers}, but the model has {len(blocks)} layers")
    first = f"{prefix}.{len(blocks) - layers}."
    start = next(i for i, name in enumerate(names) if name.startswith(first))
    return names[start:]


def policy_logits(
    model: nn.Module, params: Mapping[str, Tensor], input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """(B, T, V) logits with `params` substituted (left or right padding).

    Args:
        model: A causal LM; its own parameters fill in whatever `params` lacks.
        params: Name -> tensor, e.g. the adapted θ (may carry an autograd graph).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) bool, True on real tokens.
    """
    from ray_rlhf.models.builders import position_ids_from_mask

    kwargs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask.long(),
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }
    return torch.func.functional_call(model, dict(params), args=(), kwargs=kwargs).logits


def sequence_logprobs(
    model: nn.Module, params: Mapping[str, Tensor], rows: Mapping[str, Tensor]
) -> Tensor:
    """(N,) log π(y | x): token log-probs summed over each row's response tokens.

    Args:
        rows: input_ids (N, T), attention_mask (N, T) bool, response_mask (N, T) bool
            (True on response tokens, EOS included).
    """
    logits = policy_logits(model, params, rows["input_ids"], rows["attention_mask"])
    return masked_sum(token_logprobs(logits, rows["input_ids"]), rows["response_mask"], dim=-1)


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    prompts: Sequence[Sequence[int]],
    *,
    n_samples: int,
    max_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Sample `n_samples` responses per prompt, up to `max_tokens` tokens each.

    Full recompute per token (no KV cache): meant for tiny models inside the inner loop,
    where the policy changes every step and an inference engine would need a weight sync.

    Args:
        prompts: P prompts as token ids (as `encode_prompts` returns them).
        generator: Seeds the sampling (a resumed run draws the same responses).

    Returns:
        Right-padded rows grouped by prompt (row i belongs to prompt i // n_samples):
        input_ids (N, T) long, attention_mask and response_mask (N, T) bool (the response
        includes its EOS), finished (N,) bool (ended with EOS).
    """
    from ray_rlhf.data.tokenize import EncodedExample, pad_batch

    rows = [list(p) for p in prompts for _ in range(n_samples)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width + max_tokens), pad_id, dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, prompt in enumerate(rows):  # left-padded prompts: the next token is column `width`
        ids[i, width - len(prompt) : width] = torch.tensor(prompt)
        mask[i, width - len(prompt) : width] = True
    done = torch.zeros(len(rows), dtype=torch.bool)
    end = width
    for t in range(width, width + max_tokens):
        logits = policy_logits(model, params, ids[:, :t], mask[:, :t])[:, -1].float()  # (N, V)
        token = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
        ids[:, t] = torch.where(done, pad_id, token.squeeze(1))
        mask[:, t] = ~done
        done |= ids[:, t] == eos_id
        end = t + 1
        if bool(done.all()):
            break
    is_response = torch.arange(ids.shape[1]) >= width
    examples = [
        EncodedExample(
            ids[i, :end][mask[i, :end]].tolist(), is_response[:end][mask[i, :end]].tolist()
        )
        for i in range(len(rows))
    ]
    return pad_batch(examples, pad_id) | {"finished": done}
