"""Run reports: PNG learning curves from a metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(
    rows: list[dict[str, Any]], keys: list[str], out_png: Path, *, title: str = ""
) -> Path | None:
    """One panel per metric key against `step`; keys absent from every row are skipped.

    Returns:
        The PNG path, or None when no key had data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_rounds(
    curves: dict[int, list[tuple[int, float]]],
    accuracies: dict[str, list[float | None]],
    out_png: Path,
    *,
    curve_label: str,
) -> Path | None:
    """Two panels: each round's (step, value) curve on one x axis, and per-round accuracy
    lines (None values skipped).

    Args:
        curves: Round -> points, x already cumulative over the rounds.
        accuracies: Label -> one value (or None) per round, rounds 1..R.

    Returns:
        The PNG path, or None when there is nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for vs in accuracies.values() for v in vs if v is not None]
    if not any(curves.values()) and not values:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for r, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            left.plot(xs, ys, marker="o", markersize=3, label=f"round {r}")
    left.set_title(curve_label, fontsize=9)
    left.set_xlabel("PPO iteration (cumulative)")
    for label, values in accuracies.items():
        points = [(r, v) for r, v in enumerate(values, start=1) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            right.plot(xs, ys, marker="o", label=label)
    right.set_title("reward-model accuracy", fontsize=9)
    right.set_xlabel("round")
    right.set_xticks(range(1, max((len(v) for v in accuracies.values()), default=0) + 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
