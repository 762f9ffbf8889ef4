"""Rollout batches with real token ids for reward tests: 2 toy prompts x 2 samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch
from ray_rlhf.types import RolloutBatch

PROMPTS = ["sort 3 1 2 =", "rev 1 2 ="]
RESPONSES = ["1 2 3", "1 3 3 !", "2 1", "2"]


def token_batch(tokenizer, finished: Sequence[bool]) -> RolloutBatch:
    """The 2 x 2 batch tokenized with `tokenizer`; rows with `finished` False lack EOS."""
    examples = []
    for row, (response, done) in enumerate(zip(RESPONSES, finished, strict=True)):
        ex = encode_prompt_response(tokenizer, PROMPTS[row // 2], response)
        if not done:
            ex = ex._replace(input_ids=ex.input_ids[:-1], response_mask=ex.response_mask[:-1])
        examples.append(ex)
    padded = pad_batch(examples, tokenizer.pad_token_id)
    return RolloutBatch(
        prompt_ids=["p0", "p1"],
        prompts=PROMPTS,
        responses=RESPONSES,
        sample_logprobs=torch.zeros(padded["input_ids"].shape),
        finished=torch.tensor(list(finished)),
        n_samples=2,
        **padded,
    )
