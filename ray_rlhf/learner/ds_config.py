"""DeepSpeed config dicts built from the typed learner config."""

from __future__ import annotations

from typing import Any

from ray_rlhf.config import LearnerConfig


def deepspeed_config(
    learner: LearnerConfig, *, micro_batch_per_worker: int, grad_accum: int, world_size: int
) -> dict[str, Any]:
    """The `config=` dict for `deepspeed.initialize`.

    The optimizer is a client `torch.optim.AdamW` (works on CPU and GPU alike), so ZeRO needs
    `zero_allow_untested_optimizer`. Gradient clipping is DeepSpeed's (0: none).
    """
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_per_worker,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_per_worker * grad_accum * world_size,
        "zero_optimization": {"stage": learner.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": learner.bf16},
        "gradient_clipping": learner.grad_clip,  # always set: DeepSpeed clips at 1.0 without it
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if learner.zero_stage == 3:
        # Gather full weights on save; needed for HF export and weight sync.
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg
