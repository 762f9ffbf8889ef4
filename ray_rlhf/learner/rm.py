"""RMLearner: a plain class around one DeepSpeed engine training a Bradley-Terry reward model.

Works in any process where torch.distributed is initialized (a Ray Train worker, torchrun,
or a single process with world size 1); Ray is not imported here.

A batch of P pairs holds both sides padded to one width T:
chosen_input_ids / rejected_input_ids (P, T) long, chosen_attention_mask /
rejected_attention_mask and chosen_response_mask / rejected_response_mask (P, T) bool,
optionally chosen_segment_ends / rejected_segment_ends (P, T) bool and margin (P,) float. Both sides go through ONE forward as (2P, T) rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ray_rlhf.algo.rm_loss import bradley_terry_loss, preference_accuracy
from ray_rlhf.config import LearnerConfig, ModelConfig, RMConfig
from ray_rlhf.learner.engine import (
    SingleEngineLearner,
    init_engine,
)
from ray_rlhf.models.builders import last_token_values, load_reward_model, score_positions

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sequence_scores(
    values: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    head: str,
    segment_ends: torch.Tensor | None = None,
) -> torch.Tensor:
    """A sequence's reward from per-position values.

    Args:
        values: (N, T) per-position values (`score_positions`).
        attention_mask: (N, T) bool, True on real tokens.
        response_mask: (N, T) bool, True on response tokens (EOS included).
        head: "scalar": the value at the last real token; "per_position": the sum of the
            values over the response tokens (a segment / token-level reward model).
        segment_ends: (N, T) bool, True at the last token of each response segment
            (ALGORITHMS.md §5); None when the batch carries no segmentation.

    Returns:
        (N,) scores.
    """
    if head == "scalar":
        return last_token_values(values, attention_mask)
    return (values * response_mask.to(values.dtype)).sum(dim=-1)


def stack_pairs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[chosen; rejected] rows of a pair batch.

    Args:
        batch: P pairs (see the module docstring).

    Returns:
        input_ids (2P, T), attention_mask (2P, T), response_mask (2P, T); rows 0..P-1 are
        the chosen responses, rows P..2P-1 the rejected ones.
    """
    keys = ("input_ids", "attention_mask", "response_mask", "segment_ends")
    return {
        k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
        for k in keys
        if f"chosen_{k}" in batch
    }


class RMLearner(SingleEngineLearner):
    """Owns the reward-model engine; one `train_step` is one optimizer step on a micro-batch."""

    def __init__(
        self,
        model_dir: str | Path,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        rm_cfg: RMConfig,
        *,
        micro_batch_per_worker: int,
        seed: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.rm_cfg = rm_cfg
        model = load_reward_model(
            model_dir,
            head=rm_cfg.head,
            dtype=_DTYPES[model_cfg.dtype],
            trust_remote_code=model_cfg.trust_remote_code,
            seed=seed,
        )
        self.config = model.config
        self.engine = init_engine(
            model,
            learner_cfg,
            lr=rm_cfg.lr,
            weight_decay=0.0,
            total_steps=rm_cfg.steps,
            warmup_steps=rm_cfg.warmup_steps,
            micro_batch_per_worker=micro_batch_per_worker,
        )

    def _scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) chosen and (P,) rejected scores from one (2P, T) forward."""
        rows = stack_pairs(batch)
        mask = rows["attention_mask"]
        values = score_positions(self.engine, rows["input_ids"], mask.long())  # (2P, T)
        scores = sequence_scores(
            values, mask, rows["response_mask"], self.rm_cfg.head, rows.get("segment_ends")
        )
        return scores.chunk(2)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One forward/backward/step on P pairs.

        Args:
            batch: P pairs (see the module docstring); `margin` (P,) is used only when
                `rm.margin` is set.

        Returns:
            `rm/loss`, `rm/accuracy`, `rm/margin` (mean chosen - rejected score),
            `rm/lr`, `rm/grad_norm`, `timing/step`.
        """
        start = time.perf_counter()
        self.engine.train()
        chosen, rejected = self._scores(batch)
        margin = batch.get("margin") if self.rm_cfg.margin else None
        loss, stats = bradley_terry_loss(
            chosen.float(),
            rejected.float(),
            margin=margin,
            label_smoothing=self.rm_cfg.label_smoothing,
        )
        self.engine.backward(loss)
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "rm/loss": float(loss.detach()),
            "rm/accuracy": float(stats.accuracy),
            "rm/margin": float(stats.mean_margin),
            "rm/lr": float(self.engine.get_lr()[0]),
            "rm/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "timing/step": time.perf_counter() - start,
        }

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Accuracy on P held-out pairs, without gradients (a collective under ZeRO-3).

        Returns:
            `correct` (pairs whose chosen response scores strictly higher) and `pairs` (P),
            as floats so callers can sum them over ranks.
        """
        self.engine.eval()
        chosen, rejected = self._scores(batch)
        pairs = chosen.shape[0]
        correct = float(preference_accuracy(chosen.float(), rejected.float())) * pairs
        return {"correct": float(round(correct)), "pairs": float(pairs)}
