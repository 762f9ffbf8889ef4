"""DeepSpeed config dicts from the typed learner config."""

from ray_rlhf.config import LearnerConfig
from ray_rlhf.learner.ds_config import deepspeed_config


def test_grad_clip_zero_turns_clipping_off():
    # Without the key DeepSpeed clips at 1.0 (its GRADIENT_CLIPPING_DEFAULT).
    off = deepspeed_config(
        LearnerConfig(grad_clip=0.0), micro_batch_per_worker=2, grad_accum=1, world_size=2
    )
    assert off["gradient_clipping"] == 0.0
    on = deepspeed_config(
        LearnerConfig(grad_clip=0.5), micro_batch_per_worker=2, grad_accum=1, world_size=2
    )
    assert on["gradient_clipping"] == 0.5 and on["train_batch_size"] == 4
