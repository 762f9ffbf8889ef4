"""The gold-vs-proxy numbers of one PPO arm, from its `metrics.jsonl` (Gao et al. 2022).

Every arm evaluates on held-out prompts before its first update (step 0) and every
`ppo.eval_every` iterations: the true (gold) reward of sampled responses, the proxy reward
model's raw score of the same samples, the style-token rate and KL(pi || pi_SFT) per
sequence. This module turns those rows into the per-arm numbers of the report. Pure
Python: no Ray, no torch.
"""

from __future__ import annotations

from typing import Any

TRUE = "eval/sampled/true_reward"
PROXY = "eval/sampled/proxy_reward"
KL = "eval/sampled/kl_to_ref"
STYLE = "eval/sampled/style_rate"


def eval_points(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The evaluation rows of a run, one per step (the last one logged wins, so a resumed
    run that logged a step twice counts it once), sorted by step.

    Returns:
        Dicts with `step`, `true`, `proxy`, `kl`, `style`, and `true/<domain>` for every
        toy domain the evaluation prompts cover.
    """
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        if TRUE in row:
            by_step[int(row["step"])] = {
                "step": int(row["step"]),
                "true": float(row[TRUE]),
                "proxy": float(row[PROXY]),
                "kl": float(row[KL]),
                "style": float(row[STYLE]),
                **{f"true/{k.removeprefix(TRUE + '/')}": float(v)
                   for k, v in row.items() if k.startswith(TRUE + "/")},
            }
    return [by_step[s] for s in sorted(by_step)]


def value_at_kl(points: list[dict[str, float]], budget: float, key: str = "true") -> float | None:
    """`key` linearly interpolated where the KL curve first reaches `budget` nats.

    The curve is walked in step order; the first segment whose KL range contains the budget
    is used. None when the run never reached that KL.
    """
    for a, b in zip(points, points[1:], strict=False):
        lo, hi = sorted((a["kl"], b["kl"]))
        if lo <= budget <= hi:
            if b["kl"] == a["kl"]:
                return a[key]
            w = (budget - a["kl"]) / (b["kl"] - a["kl"])
            return a[key] + w * (b[key] - a[key])
    return None


def summarize_arm(rows: list[dict[str, Any]], kl_budgets: tuple[float, ...]) -> dict[str, Any]:
    """Per-arm numbers of one seed's run.

    Raises:
        ValueError: When the run has no evaluation at step 0 (the SFT start must be measured,
            not assumed) or fewer than two evaluations.
    """
    points = eval_points(rows)
    if len(points) < 2 or points[0]["step"] != 0:
        raise ValueError(
            f"need an evaluation at step 0 and at least one later one, got steps "
            f"{[p['step'] for p in points]} (set ppo.eval_at_start=true)"
        )
    peak = max(points, key=lambda p: p["true"])
    final = points[-1]
    return {
        "sft_true": points[0]["true"],
        "peak_true": peak["true"],
        "peak_iter": peak["step"],
        "peak_kl": peak["kl"],
        "final_true": final["true"],
        "final_proxy": final["proxy"],
        "sft_proxy": points[0]["proxy"],
        "final_kl": final["kl"],
        "sft_style_rate": points[0]["style"],
        "final_style_rate": final["style"],
        "true_at_kl": {f"{b:g}": value_at_kl(points, b) for b in kl_budgets},
        "curve": points,
    }


def truth_accuracies(
    margins: list[float], truth_gaps: list[float], same_style: list[bool]
) -> dict[str, float]:
    """How often an RM's pair margins r(chosen) - r(rejected) agree in sign with the true
    reward gap, ties of the truth skipped: over all pairs, and over the pairs whose two
    responses agree on the style token (the RM must have read quality there).

    Args:
        margins, truth_gaps, same_style: (P,) per pair.
    """
    def share(keep: list[bool]) -> float:
        right = [(m > 0) == (t > 0) for m, t, k in zip(margins, truth_gaps, keep, strict=True)
                 if k and t != 0]
        return sum(right) / len(right) if right else float("nan")

    return {"all": share([True] * len(margins)), "same_style": share(same_style)}
