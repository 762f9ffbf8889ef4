"""The work both systems do at each size, and the environment every benchmark process gets.

Everything that must be equal between ray_rlhf and TRL is here, once: prompts per step,
completions per prompt, generated tokens (forced: EOS is ignored / suppressed), completions
per optimizer step (one step per iteration), optimizer (AdamW, betas (0.9, 0.95), no weight
decay, constant lr, grad-norm clip 1.0), KL coefficient, fp32, threads.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """One size's equal work."""

    size: str
    """`tiny` or `smollm2`."""
    prompts: int
    """Prompts per iteration / step."""
    n: int
    """Completions per prompt."""
    tokens: int
    """Generated tokens per completion (exact: EOS ignored)."""
    max_prompt_tokens: int
    """Prompt length limit (the toy prompts fit under it with either tokenizer)."""
    lr: float = 1e-4
    """AdamW learning rate (constant)."""
    beta: float = 0.05
    """KL coefficient toward the frozen reference (both systems run the reference forward)."""
    rm_pairs: int = 64
    """Preference pairs per reward-model optimizer step."""
    kv_cache_mib: int = 64
    """ray_rlhf rollout engine KV cache."""

    @property
    def completions(self) -> int:
        """Completions per iteration (= per optimizer step)."""
        return self.prompts * self.n

    def as_dict(self) -> dict:
        """Plain dict (for the result files and the report)."""
        return asdict(self) | {"completions": self.completions}


WORKLOADS: dict[str, Workload] = {
    # TRL GRPO: ~0.25-0.4 s/step at 16 x 4 x 32 tokens on 2 cores (docs/benchmarks.md).
    "tiny": Workload("tiny", prompts=16, n=4, tokens=32, max_prompt_tokens=32, rm_pairs=64),
    # ~9-19 s per 4 x 4 x 32-token TRL GRPO step on 2 cores (fp32 forward/backward dominates).
    "smollm2": Workload(
        "smollm2", prompts=4, n=4, tokens=32, max_prompt_tokens=64, rm_pairs=8, kv_cache_mib=256
    ),
}
REPEATS: dict[str, dict[str, int]] = {
    "tiny": {"rounds": 3, "warmup": 2, "reps": 5},
    "smollm2": {"rounds": 2, "warmup": 1, "reps": 3},
}
"""Default alternation rounds, discarded warm-up iterations and measured iterations per run
(the runner's --rounds / --warmup / --reps override them for every size)."""
SMOKE = Workload("tiny", prompts=4, n=2, tokens=8, max_prompt_tokens=32, rm_pairs=8)
"""The smoke test's work (smallest size, a few seconds per phase)."""

THREADS = 2
"""Threads of every compute process: TRL's single process, the floor, and each ray_rlhf
role (rollout actor, learner; the phases of a synchronous iteration take turns)."""


OMP_SPIN = 0
"""`GOMP_SPINCOUNT` of every benchmark process (0: idle OpenMP threads sleep at once, as with
ray_rlhf's default `resources.omp_spin_count`); TRL and the floor get the same."""


def bench_env(threads: int = THREADS) -> dict[str, str]:
    """Environment of every benchmark subprocess (both systems get the same)."""
    env = dict(os.environ)
    env |= {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": str(OMP_SPIN),  # overrides an exported one
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "ACCELERATE_USE_CPU": "true",
        "WANDB_DISABLED": "true",
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def run_spec(run: Callable[[dict], dict], description: str | None) -> None:
    """Entry point of a benchmark subprocess: `--spec` JSON in, `--result` JSON out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="spec JSON written by the runner")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    result = run(json.loads(Path(args.spec).read_text()))
    Path(args.result).write_text(json.dumps(result, default=float))
