"""DeepSpeed engine helpers shared by the learners (SFT, PPO, RM)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.config import LearnerConfig
from ray_rlhf.learner.ds_config import deepspeed_config


def import_deepspeed() -> Any:
    """Import DeepSpeed with the CPU accelerator unless a GPU run asked otherwise."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.1):
    """LR multiplier: linear warmup to 1, then cosine decay to `floor`."""

    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def init_engine(
    model: torch.nn.Module,
    learner: LearnerConfig,
    *,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    micro_batch_per_worker: int,
    grad_accum: int = 1,
    lr_floor: float = 0.1,
) -> Any:
    """Wrap `model` in a DeepSpeed engine with AdamW and a warmup-cosine schedule.

    `lr_floor=1.0` gives a constant learning rate after warmup (what PPO uses).

    Expects torch.distributed to be initialized already (Ray Train does it); DeepSpeed
    reuses that process group. With `learner.gradient_checkpointing` the model recomputes
    its layers' activations in the backward pass. With one rank at ZeRO-0 the engine skips
    its gradient all-reduce, which would otherwise copy every gradient into a flat buffer
    and back to "reduce" over a group of one (a transient copy of all gradients).
    """
    deepspeed = import_deepspeed()
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    ds_cfg = deepspeed_config(
        learner,
        micro_batch_per_worker=micro_batch_per_worker,
        grad_accum=grad_accum,
        world_size=world,
    )
    if learner.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_steps, floor=lr_floor)
    )
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_cfg
    )
    if world == 1 and learner.zero_stage == 0:
        engine.enable_backward_allreduce = False
    return engine


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on HF activation recomputation (non-reentrant) in `model`'s layers.

    Raises:
        ValueError: The model (e.g. a custom `trust_remote_code` class) does not support it,
            naming `learner.gradient_checkpointing`.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"learner.gradient_checkpointing: {type(model).__name__} does not support "
            "gradient checkpointing; set learner.gradient_checkpointing=false"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def mean_over_ranks_(tensors: list[torch.Tensor]) -> None:
    """Average `tensors` in place over the data-parallel ranks (one flat all-reduce); a
    no-op without a process group or with one rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


def cpu_state(state: dict[str, torch.Tensor], *, copy: bool) -> dict[str, torch.Tensor]:
    """`state` detached on CPU; tied entries (one tensor under two names) stay one tensor.

    Args:
        state: A module's `state_dict()`.
        copy: Return tensors that own their memory (clone what is on CPU already);
            otherwise CPU tensors are views of the module's own, which change when it trains.
    """
    out: dict[str, torch.Tensor] = {}
    done: dict[tuple[Any, ...], torch.Tensor] = {}
    for name, t in state.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in done:
            cpu = t.detach().cpu()  # a copy already when t is on a GPU
            done[key] = cpu.clone() if copy and t.device.type == "cpu" else cpu
        out[name] = done[key]
    return out


def full_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """Full (unpartitioned) weights of the engine's module, on CPU, on every rank.

    Under ZeRO-3 every rank must call this (parameters are gathered collectively) and gets
    copies. Below ZeRO-3 the CPU tensors are the module's own (no copy of the model): use
    them before the next optimizer step, or copy them (the weight sync's broadcast keeps
    its own copy; see `RolloutPool.update_weights`).
    """
    deepspeed = import_deepspeed()
    module = engine.module
    params = list(module.parameters())
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return cpu_state(module.state_dict(), copy=True)
    return cpu_state(module.state_dict(), copy=False)


def save_engine_state(engine: Any, directory: str | Path, tag: str = "state") -> None:
    """DeepSpeed's own checkpoint (module, optimizer, scheduler; every rank its shard)."""
    engine.save_checkpoint(str(directory), tag=tag, save_latest=False)


def load_engine_state(engine: Any, directory: str | Path, tag: str = "state") -> None:
    """Restore what `save_engine_state` wrote (our own files, written by this project)."""
    path, _ = engine.load_checkpoint(str(directory), tag=tag)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint '{tag}' under {directory}")


class SingleEngineLearner:
    """Checkpoint plumbing for learners that own exactly one engine in `self.engine`
    (SFT, RM). Subclasses add the training step; PPO (two engines) has its own."""

    engine: Any

    def save_checkpoint(self, directory: str | Path) -> None:
        """Resumable engine state (every rank writes its shard)."""
        save_engine_state(self.engine, directory)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore what `save_checkpoint` wrote."""
        load_engine_state(self.engine, directory)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights on CPU (collective under ZeRO-3: call on every rank)."""
        return full_state_dict(self.engine)
