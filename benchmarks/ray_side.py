"""ray_rlhf's side: the real PPO pipeline (RolloutPool + RewardPool + learners under Ray
Train, `ray_rlhf.loops.ppo.run`) with RLOO / GRPO advantages, in its own process.

Run by the runner as `python -m benchmarks.ray_side --spec spec.json`. The spec names the
model dir, prompt files, workload, algorithm and iteration count; the result JSON holds the
process start time and every iteration's metrics row (wall-clock `time` at its end and the
`timing/*` phase split), from which the runner takes setup and per-iteration times.
"""

from __future__ import annotations

import shutil
import time

PROCESS_START = time.time()

from pathlib import Path  # noqa: E402

from benchmarks.settings import THREADS, Workload, run_spec  # noqa: E402


def ppo_overrides(spec: dict) -> list[str]:
    """Dotted config overrides that make ray_rlhf do the spec's work."""
    w = Workload(**{k: v for k, v in spec["workload"].items() if k != "completions"})
    learners = int(spec.get("learners", 1))
    actors = int(spec.get("rollout_actors", 1))
    threads = int(spec.get("threads_per_role", THREADS))
    out = [
        f"run.output_dir={spec['out_dir']}",
        f"run.name={spec['name']}",
        "run.overwrite=true",
        f"model.path={spec['model_dir']}",
        f"data.prompts_path={spec['prompts_path']}",
        f"data.eval_prompts_path={spec['eval_prompts_path']}",
        f"data.max_prompt_tokens={w.max_prompt_tokens}",
        # Prompts as written, as TRL and the floor get them (SmolLM2's chat template would
        # add a ~30-token system turn to every row).
        "data.chat_template=never",
        f"data.max_response_tokens={w.tokens}",
        f"ppo.advantage={spec['algo']}",
        f"ppo.iterations={spec['iterations']}",
        f"ppo.prompts_per_iteration={w.prompts}",
        f"ppo.minibatch_size={w.completions}",  # one optimizer step per iteration
        f"ppo.micro_batch_size={w.completions // learners}",
        "ppo.epochs=1",
        f"ppo.lr={w.lr}",
        f"ppo.kl.coef={w.beta}",
        "ppo.eval_every=100000",
        "ppo.checkpoint_every=100000",
        f"rollout.n_samples={w.n}",
        "rollout.ignore_eos=true",
        f"rollout.num_actors={actors}",
        f"rollout.cpus_per_actor={max(threads // actors, 1)}",
        f"rollout.kv_cache_mib={w.kv_cache_mib}",
        f"learner.num_workers={learners}",
        f"learner.cpus_per_worker={max(threads // learners, 1)}",
        "learner.max_failures=0",
        "learner.grad_clip=1.0",
        f"ppo.async_rollouts={str(bool(spec.get('async', False))).lower()}",
    ]
    # Left to the config's defaults unless the runner was told otherwise.
    if spec.get("transport") is not None:
        out.append(f"rollout.sync_transport={spec['transport']}")
    if spec.get("zero_stage") is not None:
        out.append(f"learner.zero_stage={spec['zero_stage']}")
    return out


def run(spec: dict) -> dict:
    """One PPO run as the spec says; returns the result dict (also written by `main`)."""
    from ray_rlhf.config import load_config, requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops import ppo
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.metrics import read_metrics

    cfg = load_config(None, ppo_overrides(spec))
    run_dir = prepare_run_dir(cfg)
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        ppo.run(cfg, run_dir, Path(cfg.model.path))
    finally:
        shutdown_ray(started)
    rows = read_metrics(run_dir / "ppo")
    # The timings are in the metrics; the run's checkpoint and policy (3 GB at 135M) are not
    # needed, and a full benchmark makes dozens of runs.
    for written in ("ray_train", "ppo_policy"):
        shutil.rmtree(run_dir / written, ignore_errors=True)
    return {"process_start": PROCESS_START, "rows": rows, "overrides": ppo_overrides(spec)}


def main() -> None:
    run_spec(run, __doc__)


if __name__ == "__main__":
    main()
