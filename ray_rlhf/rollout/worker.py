"""RolloutWorker: a plain class around one vLLM engine that turns prompts into a RolloutBatch.

No Ray here: `ray_rlhf.distributed.rollout_pool` wraps it in actors, and tests use it
in-process. The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, ~2 s to start)
unless the environment says otherwise; weight updates work in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ray_rlhf.config import RolloutConfig
from ray_rlhf.models.builders import load_tokenizer
from ray_rlhf.rollout.engine import (
    Completion,
    create_engine,
    generate,
    reload_weights,
    shutdown_engine,
)
from ray_rlhf.types import RolloutBatch


class RolloutWorker:
    """Samples responses with vLLM and reports which weights version produced them.

    Args:
        model_dir: HF causal-LM directory with its tokenizer (the base weights, version 0).
        cfg: rollout settings; `cpus_per_actor` is the engine's thread count and
            `kv_cache_mib` its KV-cache size.
        max_model_len: longest prompt + response in tokens.
        dtype: engine parameter dtype.
        seed: engine seed (used when a request is unseeded).
        trust_remote_code: allow code shipped in `model_dir`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        cfg: RolloutConfig,
        *,
        max_model_len: int,
        dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.max_model_len = max_model_len
        self._ignore_eos = cfg.ignore_eos
        self._version = 0
        self._llm = create_engine(
            model_dir,
            dtype=dtype,
            seed=seed,
            kv_cache_mib=cfg.kv_cache_mib,
            enforce_eager=cfg.enforce_eager,
            max_model_len=max_model_len,
            threads=cfg.cpus_per_actor,
            trust_remote_code=trust_remote_code,
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """One 1-token request: the first call costs ~2 s of lazy setup (measured on the
        tiny model); paying it here keeps `timing/generate` of the first iteration honest."""
        prompt = self.tokenizer("")["input_ids"] or [self.pad_token_id]
        generate(self._llm, [prompt], n=1, temperature=0.0, max_tokens=1)

    @property
    def version(self) -> int:
        """Weights version currently served (0: the weights in `model_dir`)."""
        return self._version

    def weights_version(self) -> int:
        """Same as `version` (a method, for callers that cannot read properties)."""
        return self._version

    @property
    def pad_token_id(self) -> int:
        """Id used to right-pad `input_ids` (the tokenizer's pad, else EOS, else 0)."""
        for tok_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if tok_id is not None:
                return int(tok_id)
        return 0

    def generate(
        self,
        prompt_ids: list[str],
        prompts: list[str],
        *,
        n_samples: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> RolloutBatch:
        """Sample `n_samples` responses per prompt.

        Args:
            prompt_ids: (P,) dataset ids, returned unchanged.
            prompts: (P,) prompt texts, tokenized with BOS (`tokenizer(p)["input_ids"]`).
            seed: row r (prompt r // n_samples, sample r % n_samples) is sampled with seed
                `seed + r`; None samples unseeded.

        Returns:
            A `RolloutBatch` with N = P * n_samples rows (types.py documents the layout),
            tagged with this worker's weights version.

        Raises:
            ValueError: if the id and text lists differ in length, or a prompt leaves no
                room for a response within `max_model_len`.
        """
        if len(prompt_ids) != len(prompts):
            raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
        token_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        for pid, ids in zip(prompt_ids, token_ids, strict=True):
            if len(ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {pid!r}: {len(ids)} tokens leave no room for a response "
                    f"(max_model_len={self.max_model_len})"
                )
        seeds = None if seed is None else [seed + i * n_samples for i in range(len(prompts))]
        groups = generate(
            self._llm,
            token_ids,
            n=n_samples,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seeds,
            ignore_eos=self._ignore_eos,
        )
        responses = [
            self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            for group in groups
            for c in group
        ]
        return build_rollout_batch(
            prompt_ids,
            prompts,
            token_ids,
            groups,
            n_samples=n_samples,
            responses=responses,
            pad_token_id=self.pad_token_id,
            policy_version=self._version,
        )

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Serve `state` (full weights in HF names, e.g. a LlamaForCausalLM `state_dict()`)
        from now on, as weights version `version`. The prefix cache is reset."""
        reload_weights(self._llm, state)
        self._version = version

    def shutdown(self) -> None:
        """Stop the engine and release its shared memory. Idempotent."""
        if self._llm is not None:
            shutdown_engine(self._llm)
            self._llm = None


def build_rollout_batch(
    prompt_ids: list[str],
    prompts: list[str],
    prompt_token_ids: list[list[int]],
    groups: list[list[Completion]],
    *,
    n_samples: int,
    responses: list[str],
    pad_token_id: int,
    policy_version: int,
) -> RolloutBatch:
    """Right-padded tensors of prompt + response rows, grouped by prompt.

    Args:
        prompt_token_ids: (P,) token ids of each prompt.
        groups: (P,) lists of `n_samples` completions each, in prompt order.
        responses: (N,) decoded responses, row order.

    Returns:
        A `RolloutBatch` with T = the longest prompt + response.
    """
    rows = [(ids, c) for ids, group in zip(prompt_token_ids, groups, strict=True) for c in group]
    width = max((len(ids) + len(c.token_ids) for ids, c in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    response_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    sample_logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
    for row, (ids, c) in enumerate(rows):
        start, end = len(ids), len(ids) + len(c.token_ids)
        input_ids[row, :end] = torch.tensor([*ids, *c.token_ids], dtype=torch.long)
        attention_mask[row, :end] = True
        response_mask[row, start:end] = True
        sample_logprobs[row, start:end] = torch.tensor(c.logprobs, dtype=torch.float32)
    return RolloutBatch(
        prompt_ids=list(prompt_ids),
        prompts=list(prompts),
        responses=responses,
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        sample_logprobs=sample_logprobs,
        finished=torch.tensor([c.finished for _, c in rows], dtype=torch.bool),
        n_samples=n_samples,
        policy_version=policy_version,
    )


def _pad_right(t: torch.Tensor, width: int, value: float | int | bool) -> torch.Tensor:
    """(N, T) -> (N, width), filled with `value` on the right."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def concat_rollout_batches(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Batches of consecutive prompt shares -> one batch, right-padded to a common T.

    All batches must have the same `n_samples` and `policy_version`.

    Raises:
        ValueError: on an empty list or mixed `n_samples` / `policy_version`.
    """
    if not batches:
        raise ValueError("no batches to concatenate")
    first = batches[0]
    for b in batches:
        if (b.n_samples, b.policy_version) != (first.n_samples, first.policy_version):
            raise ValueError(
                "cannot concatenate rollouts with different n_samples / policy_version: "
                f"{(b.n_samples, b.policy_version)} vs {(first.n_samples, first.policy_version)}"
            )
    width = max(b.input_ids.shape[1] for b in batches)

    def cat(name: str, value: float | int | bool) -> torch.Tensor:
        return torch.cat([_pad_right(getattr(b, name), width, value) for b in batches])

    return RolloutBatch(
        prompt_ids=[p for b in batches for p in b.prompt_ids],
        prompts=[p for b in batches for p in b.prompts],
        responses=[r for b in batches for r in b.responses],
        input_ids=cat("input_ids", pad_token_id),
        attention_mask=cat("attention_mask", False),
        response_mask=cat("response_mask", False),
        sample_logprobs=cat("sample_logprobs", 0.0),
        finished=torch.cat([b.finished for b in batches]),
        n_samples=first.n_samples,
        policy_version=first.policy_version,
    )
