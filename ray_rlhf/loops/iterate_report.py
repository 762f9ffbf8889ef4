"""The report of `ray-rlhf iterate`: one row per round from the phases' `DONE.json`, and
PPO's held-out curves of every round on one axis of cumulative iterations.

Files: `iterate_report.json` (rows, curves), `iterate_report.md` (the table, the curves),
`iterate_curves.png`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray_rlhf.loops.common import DONE_MARKER

TRUE_KEY = "eval/sampled/true_reward"
"""PPO's held-out true reward (toy world), the curve when the truth is known."""
REWARD_KEY = "eval/sampled/reward"
"""PPO's held-out reward under the round's RM, the curve otherwise."""


def _done(path: Path) -> dict[str, Any]:
    return json.loads((path / DONE_MARKER).read_text())


def round_rows(run_dir: Path, rounds: int) -> list[dict[str, Any]]:
    """Per round: the samples, RM and PPO phases' summaries (`round_<r>/<phase>/DONE.json`)."""
    rows = []
    for r in range(1, rounds + 1):
        base = run_dir / f"round_{r}"
        rows.append({"round": r, **{name: _done(base / name) for name in ("samples", "rm", "ppo")}})
    return rows


def curve_key(rows: list[dict[str, Any]]) -> str:
    """The held-out true reward when PPO logged it (toy world), else the held-out reward."""
    return TRUE_KEY if all(row["ppo"].get(TRUE_KEY) is not None for row in rows) else REWARD_KEY


def ppo_curves(run_dir: Path, rounds: int, key: str) -> dict[int, list[tuple[int, float]]]:
    """Round -> (cumulative PPO iteration, `key`) of its evaluations; round r's iteration i
    is plotted at the iterations of rounds 1..r-1 plus i (an `eval_at_start` row at i = 0)."""
    from ray_rlhf.metrics import read_metrics

    curves, offset = {}, 0
    for r in range(1, rounds + 1):
        metrics = read_metrics(run_dir / f"round_{r}" / "ppo" / "ppo")
        curves[r] = [(offset + int(row["step"]), float(row[key])) for row in metrics if key in row]
        offset += int(_done(run_dir / f"round_{r}" / "ppo")["iterations"])
    return curves


def _num(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def format_table(rows: list[dict[str, Any]], key: str) -> str:
    """The per-round table (markdown): what the policy entering the round scored on its own
    samples, the RM's accuracy on held-out pairs and on those samples (before -> after the
    update), and PPO's last held-out evaluation."""
    truth = key == TRUE_KEY
    ppo_label = "PPO held-out true reward" if truth else "PPO held-out reward (RM_r)"
    head = [
        "round",
        "samples true reward",
        "RM held-out acc",
        "RM acc on samples (RM_r-1 → RM_r)",
        ppo_label,
        "KL to π_r-1",
        "minutes",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        samples, rm, ppo = row["samples"], row["rm"], row["ppo"]
        on_samples = _num(rm["sample_accuracy"])
        if rm["sample_accuracy_before"] is not None:
            on_samples = f"{_num(rm['sample_accuracy_before'])} → {on_samples}"
        minutes = sum(row[name]["seconds"] for name in ("samples", "rm", "ppo")) / 60
        cells = [
            str(row["round"]),
            _num(samples["true_reward"]),
            _num(rm["eval_accuracy"]),
            on_samples,
            _num(ppo.get(key)),
            _num(ppo.get("eval/sampled/kl_to_ref")),
            f"{minutes:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dir: Path, rounds: int, *, method: str) -> dict[str, Any]:
    """Writes the report files; returns the JSON content.

    Args:
        method: The RM update's name for the title (`MetaRM` or `plain BT`).
    """
    from ray_rlhf.report import plot_rounds

    rows = round_rows(run_dir, rounds)
    key = curve_key(rows)
    curves = ppo_curves(run_dir, rounds, key)
    accuracies = {
        "RM held-out pairs": [row["rm"]["eval_accuracy"] for row in rows],
        "RM_r on round samples": [row["rm"]["sample_accuracy"] for row in rows],
        "RM_r-1 on round samples": [row["rm"]["sample_accuracy_before"] for row in rows],
    }
    png = plot_rounds(curves, accuracies, run_dir / "iterate_curves.png", curve_label=key)
    report = {"method": method, "curve_key": key, "rounds": rows, "curves": curves}
    (run_dir / "iterate_report.json").write_text(json.dumps(report, indent=2, default=str))
    text = [f"# Iterative RLHF: {rounds} round(s), {method} updates", "", format_table(rows, key)]
    text += ["", NOTES]
    if png is not None:
        text += ["", f"![per-round curves]({png.name})"]
    (run_dir / "iterate_report.md").write_text("\n".join(text) + "\n")
    return report


NOTES = (
    "Samples true reward: mean truth of the k responses per prompt the policy entering the "
    "round sampled (its train prompts). RM acc on samples: share of pairs of one prompt's "
    "samples with different truth that the RM orders as the truth does, for the RM before "
    "the round's update and after it. PPO: the last held-out evaluation of the round "
    "(sampled, temperature 1); KL to the policy the round started from. — : not available "
    "(no ground truth outside the toy world; no RM before round 1)."
)
