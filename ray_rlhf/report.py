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
