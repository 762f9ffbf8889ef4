"""The out-of-distribution meta-RM experiment: per-domain true reward of every arm.

Arms (experiments/configs/ood_meta.yaml): `bt_*` (PPO under the seed's BT proxy RM) and
`meta_*` (under the RM meta-learned from it), on the held-out domains (`*_heldout`) and on
the training domains (`*_train`). The protocol's tables give the pooled numbers; this adds
each evaluated domain's SFT start, peak and final true reward per seed.
"""

from __future__ import annotations

import statistics
from typing import Any

from experiments.summary import value_at_kl


def per_domain(curve: list[dict[str, float]], budget: float) -> dict[str, dict[str, float]]:
    """Domain -> its SFT start, peak, final and at-KL-`budget` true reward on one run's
    evaluation curve (None at KL when the run never reached `budget` nats)."""
    domains = sorted({k.removeprefix("true/") for p in curve for k in p if k.startswith("true/")})
    out = {}
    for d in domains:
        values = [p[f"true/{d}"] for p in curve if f"true/{d}" in p]
        out[d] = {"sft": values[0], "peak": max(values), "final": values[-1],
                  "at_kl": value_at_kl(curve, budget, key=f"true/{d}")}
    return out


def extra_json(data: dict[str, Any]) -> dict[str, Any]:
    """`domains`: arm -> domain -> {sft, peak, final, at_kl}: lists over the arm's seeds
    (`at_kl` at the first of `experiment.kl_budgets`, `domains_kl` in the JSON)."""
    budget = data["kl_budgets"][0]
    table: dict[str, Any] = {}
    for arm, entry in data["arms"].items():
        rows = [per_domain(curve, budget) for curve in entry["curves"]]
        domains = sorted({d for row in rows for d in row})
        table[arm] = {d: {k: [row[d][k] for row in rows if d in row]
                          for k in ("sft", "peak", "final", "at_kl")} for d in domains}
    return {"domains": table, "domains_kl": budget}


def verdict(data: dict[str, Any]) -> str:
    """Markdown: per-domain peak and final true reward, mean ± std over seeds."""
    extra = extra_json(data)
    table = extra["domains"]
    if not table:
        return ""

    def fmt(values: list[float | None]) -> str:
        if not values or any(v is None for v in values):
            return "–" if not values else f"n/a ({sum(v is None for v in values)} not reached)"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {spread:.3f}"

    lines = ["## Per domain (held-out sampled true reward)", "",
             f"| arm | domain | SFT start | peak | final | @ KL {extra['domains_kl']:g} |",
             "|---|---|---|---|---|---|"]
    for arm, domains in table.items():
        for d, v in domains.items():
            lines.append(f"| {arm} | {d} | {fmt(v['sft'])} | {fmt(v['peak'])} | "
                         f"{fmt(v['final'])} | {fmt(v['at_kl'])} |")
    return "\n".join(lines) + "\n"
