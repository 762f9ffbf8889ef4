"""The out-of-distribution meta-RM experiment: per-domain true reward of every arm.

Arms (experiments/configs/ood_meta.yaml): `bt_*` (PPO under the seed's BT proxy RM) and
`meta_*` (under the RM meta-learned from it), on the held-out domains (`*_heldout`) and on
the training domains (`*_train`). The protocol's tables give the pooled numbers; this adds
each evaluated domain's SFT start, peak and final true reward per seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from experiments.summary import value_at_kl


def per_domain(
    curve: list[dict[str, float]], budgets: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Domain -> its SFT start, peak and final true reward on one run's evaluation curve,
    and `at_kl`: budget (as text) -> true reward at that KL (None when the run never
    reached it)."""
    domains = sorted({k.removeprefix("true/") for p in curve for k in p if k.startswith("true/")})
    out = {}
    for d in domains:
        values = [p[f"true/{d}"] for p in curve if f"true/{d}" in p]
        at_kl = {f"{b:g}": value_at_kl(curve, b, key=f"true/{d}") for b in budgets}
        out[d] = {"sft": values[0], "peak": max(values), "final": values[-1], "at_kl": at_kl}
    return out


def extra_json(data: dict[str, Any]) -> dict[str, Any]:
    """`domains`: arm -> domain -> {sft, peak, final: lists over the arm's seeds; at_kl:
    budget -> list over seeds}, at every `experiment.kl_budgets` (`domains_kl`)."""
    budgets = list(data["kl_budgets"])
    table: dict[str, Any] = {}
    for arm, entry in data["arms"].items():
        rows = [per_domain(curve, budgets) for curve in entry["curves"]]
        domains = sorted({d for row in rows for d in row})
        table[arm] = {
            d: {k: [row[d][k] for row in rows if d in row] for k in ("sft", "peak", "final")}
            | {"at_kl": {f"{b:g}": [row[d]["at_kl"][f"{b:g}"] for row in rows if d in row]
                         for b in budgets}}
            for d in domains
        }  # fmt: skip
    return {"domains": table, "domains_kl": budgets}


def verdict(data: dict[str, Any]) -> str:
    """Markdown: per-domain SFT start, peak, final and at-KL true reward, mean ± std over
    seeds."""
    extra = extra_json(data)
    table = extra["domains"]
    if not table:
        return ""

    def fmt(values: list[float | None]) -> str:
        if not values or any(v is None for v in values):
            return "–" if not values else f"n/a ({sum(v is None for v in values)} not reached)"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {spread:.3f}"

    budgets = [f"{b:g}" for b in extra["domains_kl"]]
    lines = ["## Per domain (held-out sampled true reward)", "",
             "| arm | domain | SFT start | peak | final | "
             + " | ".join(f"@ KL {b}" for b in budgets) + " |",
             "|---|---|---|---|---|" + "---|" * len(budgets)]
    for arm, domains in table.items():
        for d, v in domains.items():
            at_kl = " | ".join(fmt(v["at_kl"][b]) for b in budgets)
            lines.append(f"| {arm} | {d} | {fmt(v['sft'])} | {fmt(v['peak'])} | "
                         f"{fmt(v['final'])} | {at_kl} |")
    return "\n".join(lines) + "\n"
