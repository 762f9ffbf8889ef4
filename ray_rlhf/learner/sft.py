"""SFTLearner: a plain class around one DeepSpeed engine training the policy on SFT data.

Works in any process where torch.distributed is initialized (a Ray Train worker, torchrun,
or a single process with world size 1); Ray is not imported here.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ray_rlhf.algo.sft import sft_loss
from ray_rlhf.config import LearnerConfig, ModelConfig, SFTConfig
from ray_rlhf.learner.engine import (
    SingleEngineLearner,
    init_engine,
)
from ray_rlhf.learning_rates import lr_for
from ray_rlhf.models.builders import load_policy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SFTLearner(SingleEngineLearner):
    """Owns the policy engine; one `train_step` is one optimizer step on a micro-batch."""

    def __init__(
        self,
        model_dir: str | Path,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        sft_cfg: SFTConfig,
        *,
        micro_batch_per_worker: int,
    ) -> None:
        self.model_dir = Path(model_dir)
        policy = load_policy(
            model_dir,
            dtype=_DTYPES[model_cfg.dtype],
            trust_remote_code=model_cfg.trust_remote_code,
        )
        self.config = policy.config
        self.engine = init_engine(
            policy,
            learner_cfg,
            lr=lr_for(sft_cfg.lr, "sft.lr", policy),
            weight_decay=sft_cfg.weight_decay,
            total_steps=sft_cfg.steps,
            warmup_steps=sft_cfg.warmup_steps,
            micro_batch_per_worker=micro_batch_per_worker,
        )

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One forward/backward/step.

        Args:
            batch: input_ids (B, T) long, attention_mask (B, T) bool, response_mask (B, T)
                bool (True on response tokens incl. EOS).

        Returns:
            `train/loss`, `train/tokens`, `train/lr`, `train/grad_norm`, `timing/step`.
        """
        start = time.perf_counter()
        self.engine.train()
        logits = self.engine(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long()
        ).logits
        loss, stats = sft_loss(logits, batch["input_ids"], batch["response_mask"])
        self.engine.backward(loss)
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "train/loss": float(stats.nll),
            "train/tokens": float(stats.tokens),
            "train/lr": float(self.engine.get_lr()[0]),
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "timing/step": time.perf_counter() - start,
        }
