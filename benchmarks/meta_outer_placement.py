"""Where `ray-rlhf meta-rm` runs its outer step: on the driver (what it does) or in a
one-worker Ray Train group (the alternative), measured end to end.

Both arms run the same `--steps` outer steps on the testbed-sized reward model (hidden 128,
4 layers): `MetaRMLearner.apply` on two domains' meta-gradients (random, the domain tasks
are the same in both designs and left out), then the atomic state save the run makes after
every step. The Ray Train arm also reports every step (`ray.train.report`, as a learner loop
does) and pays for starting its worker group, which the driver arm does not have. Plain
torch Adam in both: a DeepSpeed engine for φ would add its own start-up on top.

Prints one JSON line: wall seconds of each arm (median of `--reps`, interleaved) and the
Ray Train arm's extra seconds, also per outer step of a 300-step run.

`python -m benchmarks.meta_outer_placement --steps 20 --reps 3`
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _results(learner: Any, step: int) -> list[Any]:
    from ray_rlhf.learner.meta_rm import DomainResult

    gen = torch.Generator().manual_seed(step)
    return [
        DomainResult(
            domain=name,
            grads={
                k: 1e-3 * torch.randn(p.shape, generator=gen)
                for k, p in learner.rm.named_parameters()
            },
            metrics={"outer_loss": 0.69},
        )
        for name in ("sort", "rev")
    ]


def _outer_steps(rm_dir: str, state_dir: str, steps: int, report: bool) -> None:
    """Load φ, then `steps` x (apply + save [+ report])."""
    import ray.train

    from ray_rlhf.config_meta import MetaConfig
    from ray_rlhf.learner.meta_rm import MetaRMLearner

    learner = MetaRMLearner(rm_dir, MetaConfig())
    for step in range(steps):
        metrics = learner.apply(_results(learner, step))
        learner.save(state_dir)
        if report:
            ray.train.report(metrics)


def _train_loop(config: dict[str, Any]) -> None:
    _outer_steps(config["rm_dir"], config["state_dir"], config["steps"], report=True)


def _ray_train_arm(rm_dir: Path, root: Path, steps: int, rep: int) -> float:
    from ray_rlhf.config import load_config
    from ray_rlhf.distributed.trainer import fit_learners

    cfg = load_config(None, ["learner.num_workers=1", f"run.output_dir={root}"])
    run_dir = root / f"ray_train_{rep}"
    (run_dir / "logs").mkdir(parents=True)
    loop_config = {"rm_dir": str(rm_dir), "state_dir": str(run_dir / "state"), "steps": steps,
                   "metrics_dir": str(run_dir)}  # fmt: skip
    t0 = time.perf_counter()
    fit_learners(cfg, _train_loop, loop_config, run_dir=run_dir, name="outer")
    return time.perf_counter() - t0


def _driver_arm(rm_dir: Path, root: Path, steps: int, rep: int) -> float:
    t0 = time.perf_counter()
    _outer_steps(str(rm_dir), str(root / f"driver_{rep}"), steps, report=False)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from ray_rlhf.config import ResourcesConfig
    from ray_rlhf.data import toyworld
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model
    from ray_rlhf.models.tokenizer import build_word_tokenizer

    with tempfile.TemporaryDirectory(dir=Path("runs").resolve()) as tmp:
        root = Path(tmp)
        spec = TinyModelSpec(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512)
        rm_dir = write_tiny_model(root / "rm", build_word_tokenizer(toyworld.vocabulary()), spec)
        started = init_ray(ResourcesConfig(num_cpus=2))
        times: dict[str, list[float]] = {"driver": [], "ray_train": []}
        try:
            for rep in range(args.reps):
                arms = [("driver", _driver_arm), ("ray_train", _ray_train_arm)]
                for name, arm in arms if rep % 2 == 0 else arms[::-1]:
                    times[name].append(arm(rm_dir, root, args.steps, rep))
        finally:
            shutdown_ray(started)
    driver, ray_train = (statistics.median(times[k]) for k in ("driver", "ray_train"))
    extra = ray_train - driver
    print(json.dumps({
        "steps": args.steps, "driver_s": round(driver, 2), "ray_train_s": round(ray_train, 2),
        "ray_train_extra_s": round(extra, 2),
        "extra_per_step_of_300_s": round(extra / 300, 3), "runs": times,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
