"""The out-of-distribution meta-RM experiment: per-domain true reward of every arm.

Arms (experiments/configs/ood_meta.yaml): `bt_*` (PPO under the seed's BT proxy RM) and
`meta_*` (under the RM meta-learned from it), on the held-out domains (`*_heldout`) and on
the training domains (`*_train`). The protocol's tables give the pooled numbers; this adds
each evaluated domain's SFT start, peak and final true reward per seed.
"""

from __future__ import annotations

import statistics
from typing import Any


def per_domain(curve: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Domain -> its start, peak and final true reward on one run's evaluation curve."""
    domains = sorted({k.removeprefix("true/") for p in curve for k in p if k.startswith("true/")})
    out = {}
    for d in domains:
        values = [p[f"true/{d}"] for p in curve if f"true/{d}" in p]
        out[d] = {"sft": values[0], "peak": max(values), "final": values[-1]}
    return out


def extra_json(data: dict[str, Any]) -> dict[str, Any]:
    """`domains`: arm -> domain -> {sft, peak, final}: lists over the arm's seeds."""
    table: dict[str, Any] = {}
    for arm, entry in data["arms"].items():
        rows = [per_domain(curve) for curve in entry["curves"]]
        domains = sorted({d for row in rows for d in row})
        table[arm] = {d: {k: [row[d][k] for row in rows if d in row]
                          for k in ("sft", "peak", "final")} for d in domains}
    return {"domains": table}


def verdict(data: dict[str, Any]) -> str:
    """Markdown: per-domain peak and final true reward, mean ± std over seeds."""
    table = extra_json(data)["domains"]
    if not table:
        return ""

    def fmt(values: list[float]) -> str:
        if not values:
            return "–"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {spread:.3f}"

    lines = ["## Per domain (held-out sampled true reward)", "",
             "| arm | domain | SFT start | peak | final |", "|---|---|---|---|---|"]
    for arm, domains in table.items():
        for d, v in domains.items():
            lines.append(f"| {arm} | {d} | {fmt(v['sft'])} | {fmt(v['peak'])} | "
                         f"{fmt(v['final'])} |")
    return "\n".join(lines) + "\n"
