"""Preference strength vs plain BT: how well the ensemble's strength finds the bad labels.

Arms (experiments/configs/strength.yaml): `plain` BT and the strength losses `flip`,
`margin`, `flip_margin` (read the per-pair strength mu, the ensemble's mean margin) and
`smoothing` (no strength). The protocol's tables compare the arms; this adds, per seed, what
the strength stage's ensemble saw in the training pairs:

- `negative_share`: pairs with mu < 0, the ones `flip` flips;
- `flipped_given_negative` / `flipped_caught`: of those, the share the simulated annotator
  really flipped (precision), and the share of its flips they include (recall);
- `truth_wrong_given_negative` / `truth_wrong_given_positive`: the share whose label ranks
  the responses against the truth (true-reward ties count as not wrong);
- the same precision and truth shares for the weakest 10 % of pairs (`rm.flip_mode:
  bottom_fraction` at its default `flip_fraction`);
- `truth_wrong[_after_flip]_{same,diff}_style`: the share of labels against the truth
  before and after `flip`, on pairs whose responses agree / differ in the style token;
- `style_against_label_given_{negative,positive}`: the share where only the rejected
  response has the style token, the pairs an ensemble that learned the annotator's style
  bonus doubts.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

BOTTOM_FRACTION = 0.1
STRENGTH_ARMS = ("flip", "margin", "flip_margin")


def strength_file(run_dir: Path) -> Path | None:
    """The strength-annotated pairs one finished (arm, seed) run's RM trained on (None when
    its RM read no strength)."""
    done = json.loads((run_dir / "DONE.json").read_text())
    cfg = yaml.safe_load((Path(done["reward_model"]).parent / "config.yaml").read_text())
    path = cfg["data"].get("preferences_path")
    return Path(path) if path else None


def diagnostics(path: Path) -> dict[str, float]:
    """The ensemble's view of one seed's pairs (see the module docstring)."""
    import pyarrow.parquet as pq

    cols = pq.read_table(path, columns=["strength", "label_flipped", "chosen_true_reward",
                                        "rejected_true_reward", "chosen_style",
                                        "rejected_style"]).to_pydict()
    mu, flipped = cols["strength"], cols["label_flipped"]
    truth = list(zip(cols["chosen_true_reward"], cols["rejected_true_reward"], strict=True))
    wrong = [c < r for c, r in truth]
    n = len(mu)
    negative = [m < 0 for m in mu]
    # After `flip`: a pair with mu < 0 is against the truth when its label was with it.
    wrong_after = [(c > r) if neg else (c < r) for (c, r), neg in zip(truth, negative, strict=True)]
    styles = list(zip(cols["chosen_style"], cols["rejected_style"], strict=True))
    same_style = [c == r for c, r in styles]
    style_against = [bool(r) and not c for c, r in styles]
    cut = sorted(mu)[max(int(BOTTOM_FRACTION * n) - 1, 0)]
    bottom = [m <= cut for m in mu]

    def share(values: list[bool], where: list[bool]) -> float:
        picked = [v for v, w in zip(values, where, strict=True) if w]
        return sum(picked) / max(len(picked), 1)

    def negated(values: list[bool]) -> list[bool]:
        return [not v for v in values]

    return {
        "truth_wrong_same_style": share(wrong, same_style),
        "truth_wrong_after_flip_same_style": share(wrong_after, same_style),
        "truth_wrong_diff_style": share(wrong, negated(same_style)),
        "truth_wrong_after_flip_diff_style": share(wrong_after, negated(same_style)),
        "style_against_label_given_negative": share(style_against, negative),
        "style_against_label_given_positive": share(style_against, negated(negative)),
        "negative_share": sum(negative) / n,
        "flipped_share": sum(flipped) / n,
        "flipped_given_negative": share(flipped, negative),
        "flipped_caught": share(negative, flipped),
        "truth_wrong_given_negative": share(wrong, negative),
        "truth_wrong_given_positive": share(wrong, negated(negative)),
        "flipped_given_bottom": share(flipped, bottom),
        "truth_wrong_given_bottom": share(wrong, bottom),
    }


def extra_json(data: dict[str, Any]) -> dict[str, Any]:
    """`strength_ensemble`: `seeds` and each diagnostic as a list over them."""
    run_dir = Path(data["run_dir"])
    arm = next((a for a in STRENGTH_ARMS if data["arms"].get(a, {}).get("seeds")), None)
    if arm is None:
        return {}
    seeds = data["arms"][arm]["seeds"]
    rows = []
    for seed in seeds:
        path = strength_file(run_dir / f"seed{seed}" / arm)
        rows.append(diagnostics(path) if path else {})
    keys = sorted({k for row in rows for k in row})
    table = {k: [row.get(k) for row in rows] for k in keys}
    return {"strength_ensemble": {"seeds": seeds, **table}}


def verdict(data: dict[str, Any]) -> str:
    """Markdown: the ensemble diagnostics per seed."""
    extra = extra_json(data).get("strength_ensemble")
    if not extra:
        return ""
    names = {
        "flipped_share": "labels flipped by the annotator",
        "negative_share": "pairs with μ < 0 (flipped by `flip`)",
        "flipped_given_negative": "of those, flipped by the annotator (precision)",
        "flipped_caught": "annotator's flips with μ < 0 (recall)",
        "truth_wrong_given_negative": "label against the truth, μ < 0",
        "truth_wrong_given_positive": "label against the truth, μ ≥ 0",
        "flipped_given_bottom": f"flipped by the annotator, weakest {BOTTOM_FRACTION:.0%} of μ",
        "truth_wrong_given_bottom": f"label against the truth, weakest {BOTTOM_FRACTION:.0%} of μ",
        "truth_wrong_same_style": "label against the truth, same-style pairs",
        "truth_wrong_after_flip_same_style": "same-style pairs after `flip`",
        "truth_wrong_diff_style": "label against the truth, pairs differing in `!`",
        "truth_wrong_after_flip_diff_style": "pairs differing in `!` after `flip`",
        "style_against_label_given_negative": "only the rejected response has `!`, μ < 0",
        "style_against_label_given_positive": "only the rejected response has `!`, μ ≥ 0",
    }
    seeds = extra["seeds"]
    lines = ["## The strength ensemble on the training pairs", "",
             "| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for key, label in names.items():
        values = extra.get(key, [])
        present = [v for v in values if v is not None]
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in values)
        mean = f"{statistics.fmean(present):.3f}" if present else "–"
        lines.append(f"| {label} | {cells} | {mean} |")
    return "\n".join(lines) + "\n"
