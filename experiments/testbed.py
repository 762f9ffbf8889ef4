"""The testbed experiment: is learned-RM RLHF working on the toy world?

Arms (experiments/configs/testbed.yaml): `vanilla`, PPO (RLOO) under the proxy RM with the
testbed's KL coefficient and budget, and `vanilla_long`, the same RM pushed further (more
iterations, a smaller KL coefficient). The testbed is calibrated when, on every seed:

(i)   the proxy RM ranks held-out in-distribution pairs whose responses agree on the style
      token like the truth does at least `MIN_RM_ACCURACY` of the time (ties skipped);
(ii)  vanilla PPO raises held-out sampled true reward above its SFT start by at least
      `MIN_GAIN` at its peak;
(iii) pushed further, it over-optimizes: the proxy score ends above its value at the true
      reward's peak while the true reward ends at least `MIN_FALL` below that peak (about
      twice the standard error of one evaluation's mean), and the `!` rate rises.
"""

from __future__ import annotations

from typing import Any

MIN_RM_ACCURACY = 0.80
MIN_GAIN = 0.05
MIN_FALL = 0.02


def conditions(data: dict[str, Any]) -> dict[str, list[bool]]:
    """Per seed, whether each condition holds (needs both arms on the same seeds)."""
    van, long = data["arms"]["vanilla"], data["arms"]["vanilla_long"]
    out: dict[str, list[bool]] = {"i": [], "ii": [], "iii": []}
    for i, _ in enumerate(van["seeds"]):
        out["i"].append(van["rm_acc_same_style"][i] >= MIN_RM_ACCURACY)
        out["ii"].append(van["peak_true"][i] - van["sft_true"][i] >= MIN_GAIN)
    for curve in long["curves"]:
        peak = max(curve, key=lambda p: p["true"])
        final = curve[-1]
        out["iii"].append(
            final["true"] <= peak["true"] - MIN_FALL
            and final["proxy"] > peak["proxy"]
            and final["style"] > curve[0]["style"]
        )
    return out


def verdict(data: dict[str, Any]) -> str:
    """Markdown: the three conditions, per seed."""
    if not {"vanilla", "vanilla_long"} <= set(data["arms"]):
        return ""
    result = conditions(data)
    names = {
        "i": f"(i) RM truth accuracy, same-style pairs ≥ {MIN_RM_ACCURACY}",
        "ii": f"(ii) vanilla peak − SFT start ≥ +{MIN_GAIN}",
        "iii": f"(iii) vanilla_long over-optimizes (true falls ≥ {MIN_FALL} from its peak, "
        "proxy and `!` rise)",
    }
    lines = ["## Calibration conditions", ""]
    for key, flags in result.items():
        shown = ", ".join("yes" if f else "NO" for f in flags) or "no runs"
        lines.append(f"- {names[key]}: {shown} (per seed)")
    return "\n".join(lines) + "\n"


def extra_json(data: dict[str, Any]) -> dict[str, Any]:
    """Top-level per-seed RM accuracies (both arms share the seed's proxy RM)."""
    van = data["arms"].get("vanilla")
    if van is None:
        return {}
    return {"seeds": van["seeds"], "rm_acc_same_style": van["rm_acc_same_style"],
            "rm_acc_all": van["rm_acc_all"], "conditions": conditions(data)
            if "vanilla_long" in data["arms"] else {}}
