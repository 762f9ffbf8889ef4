"""Report of an experiment: `report.md`, `<name>.json` and `gold_vs_kl.png` in its run dir.

Per arm, mean +- std over seeds: SFT start, peak held-out true reward and its iteration,
final true reward, true reward at the KL budgets, final style-token rate, proxy RM
accuracy against the truth; and a gold-vs-KL plot (thin line per seed, thick mean).
The JSON holds every per-seed number, so anyone can recompute the tables.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from experiments.summary import summarize_arm

LIST_FIELDS = ("sft_true", "peak_true", "peak_iter", "final_true", "final_proxy", "final_kl",
               "final_style_rate", "rm_acc_all", "rm_acc_same_style", "rm_acc_shifted")


def collect(exp: Any) -> dict[str, Any]:
    """The report's numbers from every finished (arm, seed) run dir of `exp`."""
    from ray_rlhf.metrics import read_metrics

    budgets = exp.settings.kl_budgets
    arms: dict[str, Any] = {}
    seconds = 0.0
    for arm in exp.arms:
        entry: dict[str, Any] = {"seeds": [], "true_at_kl": {f"{b:g}": [] for b in budgets},
                                 "curves": []}
        entry |= {k: [] for k in LIST_FIELDS}
        entry["metrics"] = {k: [] for k in exp.settings.report_metrics}
        for seed in exp.settings.seeds:
            run_dir = exp.run_dir / f"seed{seed}" / arm
            if not (run_dir / "DONE.json").exists():
                continue
            done = json.loads((run_dir / "DONE.json").read_text())
            seconds += float(done.get("seconds", 0.0))
            rows = read_metrics(run_dir / "ppo")
            s = summarize_arm(rows, budgets)
            for key in exp.settings.report_metrics:
                values = [r[key] for r in rows if key in r]
                entry["metrics"][key].append(statistics.fmean(values) if values else None)
            entry["seeds"].append(seed)
            for key in LIST_FIELDS:
                entry[key].append(s[key] if key in s else done.get(key))
            for b, v in s["true_at_kl"].items():
                entry["true_at_kl"][b].append(v)
            entry["curves"].append(s["curve"])
        arms[arm] = entry
    return {"experiment": exp.name, "run_dir": str(exp.run_dir),
            "config_sha256": exp.config_sha256,
            "testbed_sha256": exp.testbed_sha256,
            "overrides": list(exp.overrides), "kl_budgets": list(budgets),
            "compute_seconds": seconds, "arms": arms}


def mean_std(values: list[float | None]) -> str:
    """`mean ± std` of the non-missing values, with `(k/n)` when some are missing."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    digits = 1 if all(isinstance(v, int) for v in present) else 3
    text = f"{statistics.fmean(present):.{digits}f} ± {std:.{digits}f}"
    return text if len(present) == len(values) else f"{text} ({len(present)}/{len(values)})"


def format_tables(data: dict[str, Any]) -> str:
    """Markdown: the per-arm table (mean ± std over seeds), then one row per (arm, seed)."""
    budgets = [f"{b:g}" for b in data["kl_budgets"]]
    cols = ["seeds", "SFT start", "peak true", "peak iter", "final true",
            *[f"true @ KL {b}" for b in budgets], "final KL", "final `!` rate",
            "RM acc same-style", "RM acc all", "RM acc shifted"]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm, e in data["arms"].items():
        cells = [str(len(e["seeds"])), mean_std(e["sft_true"]), mean_std(e["peak_true"]),
                 mean_std(e["peak_iter"]), mean_std(e["final_true"]),
                 *[mean_std(e["true_at_kl"][b]) for b in budgets], mean_std(e["final_kl"]),
                 mean_std(e["final_style_rate"]), mean_std(e["rm_acc_same_style"]),
                 mean_std(e["rm_acc_all"]), mean_std(e["rm_acc_shifted"])]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    per_seed = ["seed", "SFT start", "peak true (iter)", "final true", "final proxy",
                "final KL", "final `!` rate"]
    lines += ["", "Per seed:", "", "| arm | " + " | ".join(per_seed) + " |",
              "|---" * (len(per_seed) + 1) + "|"]
    for arm, e in data["arms"].items():
        for i, seed in enumerate(e["seeds"]):
            lines.append(
                f"| {arm} | {seed} | {e['sft_true'][i]:.3f} | {e['peak_true'][i]:.3f} "
                f"({e['peak_iter'][i]}) | {e['final_true'][i]:.3f} | {e['final_proxy'][i]:.3f} "
                f"| {e['final_kl'][i]:.2f} | {e['final_style_rate'][i]:.3f} |"
            )
    metrics = next(iter(data["arms"].values()))["metrics"]
    if metrics:
        lines += ["", "Training metrics, mean over iterations (mean ± std over seeds):", "",
                  "| arm | " + " | ".join(f"`{k}`" for k in metrics) + " |",
                  "|---" * (len(metrics) + 1) + "|"]
        for arm, e in data["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(mean_std(v) for v in e["metrics"].values())
                         + " |")
    return "\n".join(lines) + "\n"


def plot_gold_vs_kl(data: dict[str, Any], out_png: Path) -> Path:
    """Three panels: true reward vs KL, proxy reward vs KL, `!` rate vs iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("kl", "true", "held-out true (gold) reward"),
              ("kl", "proxy", "proxy RM score (raw)"),
              ("step", "style", "`!` rate of held-out samples")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (x, y, title) in zip(axes, panels, strict=True):
        for i, (arm, e) in enumerate(data["arms"].items()):
            color = colors[i % len(colors)]
            for j, curve in enumerate(e["curves"]):
                ax.plot([p[x] for p in curve], [p[y] for p in curve], color=color,
                        alpha=0.35 if len(e["curves"]) > 1 else 1.0, linewidth=0.9,
                        label=arm if j == 0 else None)
            if len(e["curves"]) > 1:
                n = min(len(c) for c in e["curves"])
                ax.plot([statistics.fmean(c[k][x] for c in e["curves"]) for k in range(n)],
                        [statistics.fmean(c[k][y] for c in e["curves"]) for k in range(n)],
                        color=color, linewidth=2.2)
        ax.set_xlabel("KL(π‖π_SFT) per sequence, nats" if x == "kl" else "PPO iteration")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_report(exp: Any, seconds: float) -> dict[str, Any]:
    """Write report.md, <name>.json and gold_vs_kl.png; returns the JSON data."""
    import importlib
    import importlib.util

    data = collect(exp)
    out = exp.run_dir
    public = {k: v for k, v in data.items()}
    public["arms"] = {a: {k: v for k, v in e.items() if k != "curves"}
                      for a, e in data["arms"].items()}
    public["curves"] = {a: e["curves"] for a, e in data["arms"].items()}
    # An experiment may have a module of its own (extra JSON fields, a verdict section).
    found = importlib.util.find_spec(f"experiments.{exp.name}") is not None
    module = importlib.import_module(f"experiments.{exp.name}") if found else None
    if module is not None and hasattr(module, "extra_json"):
        public |= module.extra_json(data)
    (out / f"{exp.name}.json").write_text(json.dumps(public, indent=1))
    plot_gold_vs_kl(data, out / "gold_vs_kl.png")
    extra = module.verdict(data) if module is not None and hasattr(module, "verdict") else ""
    text = (
        f"# {exp.settings.title or exp.name}\n\n"
        f"Config: `{exp.config_file or f'experiments/configs/{exp.name}.yaml'}`, "
        f"sha256 `{exp.config_sha256}`"
        + (f", overrides {list(exp.overrides)}" if exp.overrides else "")
        + (f"; on the testbed `experiments/configs/{exp.settings.testbed}.yaml`, sha256 "
           f"`{exp.testbed_sha256}`" if exp.testbed_sha256 else "") + ".\n"
        f"Seeds {list(exp.settings.seeds)}. Compute of the finished (arm, seed) runs, stages "
        f"included: {data['compute_seconds'] / 60:.1f} min; this invocation: "
        f"{seconds / 60:.1f} min.\n\n" + format_tables(data) + "\n" + extra
        + "\n![gold vs KL](gold_vs_kl.png)\n"
    )
    (out / "report.md").write_text(text)
    return public
