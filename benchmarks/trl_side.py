"""TRL's side: `GRPOTrainer`, `RLOOTrainer` or `RewardTrainer` on the spec's work.

Runs in the bench venv (`benchmarks/trl_env.py`), never in the project's:
`.cache/bench/venv/bin/python -m benchmarks.trl_side --spec spec.json --result out.json`.
A callback stamps every optimizer step's begin and end (wall clock); generation, scoring
and the update all happen inside a step (one generation per step, `steps_per_generation=1`).
"""

from __future__ import annotations

import time

PROCESS_START = time.time()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.settings import THREADS, Workload, run_spec  # noqa: E402


def toy_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The toy world's rule reward, the same function ray_rlhf's reward actor calls."""
    from ray_rlhf.data.toyworld import true_reward

    return [true_reward(p, c) for p, c in zip(prompts, completions, strict=True)]


def _common_args(spec: dict, w: Workload) -> dict:
    return {
        "output_dir": str(Path(spec["out_dir"]) / spec["name"]),
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "max_steps": spec["iterations"],
        "learning_rate": w.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "gradient_accumulation_steps": 1,
        "logging_steps": 100000,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }


def build_trainer(spec: dict, callbacks: list) -> object:
    """The TRL trainer for `spec['algo']` (grpo, rloo or reward)."""
    from datasets import Dataset

    w = Workload(**{k: v for k, v in spec["workload"].items() if k != "completions"})
    common = _common_args(spec, w)
    if spec["algo"] == "reward":
        from trl import RewardConfig, RewardTrainer

        rows = [json.loads(line) for line in Path(spec["pairs_path"]).read_text().splitlines()]
        data = Dataset.from_dict(
            {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
        )
        args = RewardConfig(per_device_train_batch_size=w.rm_pairs, **common)
        return RewardTrainer(spec["model_dir"], args=args, train_dataset=data, callbacks=callbacks)
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = {
        "grpo": (GRPOConfig, GRPOTrainer),
        "rloo": (RLOOConfig, RLOOTrainer),
    }[spec["algo"]]
    args = config_cls(
        per_device_train_batch_size=w.completions,  # counts completions: one step, all of them
        num_generations=w.n,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=w.tokens,
        # Equal work: exactly `tokens` tokens per completion (EOS suppressed until then).
        generation_kwargs={"min_new_tokens": w.tokens},
        temperature=1.0,
        top_p=1.0,
        beta=w.beta,
        shuffle_dataset=False,  # the prompts come in ray_rlhf's draw order
        model_init_kwargs={"dtype": "float32"},
        **common,
    )
    data = Dataset.from_dict({"prompt": spec["prompts"]})
    return trainer_cls(
        spec["model_dir"],
        reward_funcs=toy_reward,
        args=args,
        train_dataset=data,
        callbacks=callbacks,
    )


def run(spec: dict) -> dict:
    """Train for `spec['iterations']` steps; returns process start and step stamps."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(THREADS)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begins: list[float] = []
            self.ends: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.begins.append(time.time())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.ends.append(time.time())

    timer = StepTimer()
    trainer = build_trainer(spec, [timer])
    trainer.train()
    return {
        "process_start": PROCESS_START,
        "step_begins": timer.begins,
        "step_ends": timer.ends,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    run_spec(run, __doc__)


if __name__ == "__main__":
    main()
