"""Evidence grid for the RM methods of issue 4 on the toy world (`jobs/rm_evidence.py`).

Two experiments, every arm trained from the same SFT policy with `train_rm_local` in Ray
tasks (one process per reward model, `learner.cpus_per_worker` CPUs each), 3 seeds:

1. Preference strength (Wang et al. 2024, ALGORITHMS.md 3): at label noise eps in
   `noise_levels`, an ensemble of `rm.ensemble_members` RMs annotates pref_train with the
   strength mu, then plain BT, flip, margin, flip+margin and smoothing(mu<0)+margin are
   trained on it. The annotator's style bias is `strength_bias` (0: the noise alone).
2. Decomposition (Mao et al. 2025, ALGORITHMS.md 1): plain BT vs the prompt-free
   prioritized loss with the annotator's style bias on and off (`bias_levels`; the shifted
   split reverses it and puts the style token on the worse response with probability
   `data.toyworld.shifted_style_on_worse`).

A seed sets the toy world's seed (a fresh preference sample), the RM head init and the data
order. Every arm is scored against the ground truth (`true_reward`, ties skipped) on
pref_test and pref_shifted; the report is `evidence.md` + `evidence.png` in the run dir.
Finished arms are saved under `arms/` as they complete, so a rerun resumes the grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.config import RLHFConfig

STRENGTH_LOSSES = ("plain", "flip", "margin", "flip_margin", "smooth_negative_margin")


@dataclass(frozen=True)
class RMEvidenceConfig:
    """The grid (section `evidence` of the job's YAML)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Toy-world seed = RM seed of each repetition."""
    noise_levels: tuple[float, ...] = (0.0, 0.3)
    """Label-flip rates eps of the strength experiment."""
    strength_losses: tuple[str, ...] = STRENGTH_LOSSES
    """`rm.loss` variants of the strength experiment."""
    strength_bias: float = 0.0
    """Annotator style bias in the strength experiment (0 isolates the label noise)."""
    smoothing_alpha: float = 0.1
    """Label smoothing alpha of `smooth_negative_margin` (ALGORITHMS.md 3b default)."""
    bias_levels: tuple[float, ...] = (0.3, 0.0)
    """Annotator style bias of the decomposition experiment (the shifted split gets -bias)."""
    decomposition_noise: float = 0.05
    """Label-flip rate of the decomposition experiment."""
    sft_policy: str | None = None
    """Start every RM from this policy dir; None trains one SFT policy first (`sft`)."""

    def __post_init__(self) -> None:
        unknown = set(self.strength_losses) - set(STRENGTH_LOSSES)
        if unknown:
            raise ValueError(f"strength_losses: unknown {sorted(unknown)}")
        if not self.seeds:
            raise ValueError("seeds: need at least one")


@dataclass(frozen=True)
class Arm:
    """One reward model of the grid."""

    experiment: str  # "strength", "decomposition" or "ensemble"
    method: str  # rm.loss, "prioritized", or "member<m>"
    level: float  # eps (strength, ensemble) or bias (decomposition)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.experiment}_{self.method}_{self.level:g}_{self.seed}"


def arm_config(base: RLHFConfig, ev: RMEvidenceConfig, arm: Arm) -> RLHFConfig:
    """The full config of one arm: the toy world's noise / bias and the RM loss."""
    experiment = "strength" if arm.experiment == "ensemble" else arm.experiment
    noise = arm.level if experiment == "strength" else ev.decomposition_noise
    bias = ev.strength_bias if experiment == "strength" else arm.level
    toy = dataclasses.replace(
        base.data.toyworld,
        seed=arm.seed,
        label_noise=noise,
        annotator_bias=bias,
        shifted_bias=-bias,
    )
    rm = dataclasses.replace(
        base.rm,
        loss=arm.method if experiment == "strength" and arm.experiment != "ensemble" else "plain",
        label_smoothing=ev.smoothing_alpha if arm.method == "smooth_negative_margin" else 0.0,
        prioritized=arm.method == "prioritized",
    )
    data = dataclasses.replace(base.data, toyworld=toy)
    return dataclasses.replace(base, data=data, rm=rm)


def truth_accuracy(margins: torch.Tensor, dataset: Any) -> float:
    """Share of pairs with unequal true reward where the margin picks the truly better one."""
    truth = torch.tensor(dataset["chosen_true_reward"]) - torch.tensor(
        dataset["rejected_true_reward"]
    )
    keep = truth != 0
    return float(((margins[keep] > 0) == (truth[keep] > 0)).float().mean())


def _style_gap(dr2: torch.Tensor, dataset: Any) -> float:
    """Mean dr2 of pairs where only the chosen response has the style token, minus the
    mean where only the rejected one has it (how strongly dr2 tracks the feature)."""
    style = (
        torch.tensor(dataset["chosen_style"]).int() - torch.tensor(dataset["rejected_style"]).int()
    )
    return float(dr2[style == 1].mean() - dr2[style == -1].mean())


class Grid:
    """Data, tokenization and saved results of the grid (one instance per job)."""

    def __init__(self, base: RLHFConfig, ev: RMEvidenceConfig, run_dir: Path, policy: Path):
        self.base, self.ev, self.run_dir, self.policy = base, ev, run_dir, policy
        self.arms_dir = run_dir / "arms"
        self.arms_dir.mkdir(parents=True, exist_ok=True)
        self._data: dict[tuple, Any] = {}

    def splits(self, cfg: RLHFConfig) -> dict[str, Any]:
        """pref_train / pref_test / pref_shifted of the arm's toy world (cached)."""
        from ray_rlhf.data.toyworld import build_splits

        key = dataclasses.astuple(cfg.data.toyworld)
        if key not in self._data:
            s = build_splits(cfg.data.toyworld)
            self._data[key] = {
                "train": s.pref_train,
                "test": s.pref_test,
                "shifted": s.pref_shifted,
            }
        return self._data[key]

    def tensors(self, dataset: Any, strength: torch.Tensor | None = None) -> dict:
        from ray_rlhf.loops.rm import tokenize_pairs
        from ray_rlhf.models.builders import load_tokenizer

        tokenizer = load_tokenizer(self.policy)
        cfg = self.base.data
        out = tokenize_pairs(
            dataset, tokenizer, cfg.max_prompt_tokens + cfg.max_response_tokens + 2
        )
        if strength is not None:
            out["strength"] = strength
        return out

    def done(self, arm: Arm) -> dict | None:
        path = self.arms_dir / f"{arm.key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, arm: Arm, result: dict) -> None:
        path = self.arms_dir / f"{arm.key}.json"
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)

    def run(self, arms: list[Arm], strengths: dict[tuple, torch.Tensor] | None = None) -> None:
        """Train every arm not saved yet, in parallel Ray tasks; save each as it ends."""
        from ray_rlhf.distributed.ensemble import LocalRMTask, train_rms

        todo = [a for a in arms if self.done(a) is None]
        tasks = []
        for arm in todo:
            cfg = arm_config(self.base, self.ev, arm)
            data = self.splits(cfg)
            strength = None if strengths is None else strengths.get((arm.level, arm.seed))
            score = {"test": self.tensors(data["test"]), "shifted": self.tensors(data["shifted"])}
            if arm.experiment == "ensemble":
                score = {"train": self.tensors(data["train"])}
            tasks.append(
                LocalRMTask(
                    cfg=cfg,
                    model_dir=str(self.policy),
                    train=self.tensors(data["train"], strength),
                    score=score,
                    seed=arm.seed * 1000 + _member_index(arm),
                    prompt_free=arm.experiment == "decomposition",
                )
            )
        start = time.perf_counter()
        for i, result in train_rms(tasks):
            arm = todo[i]
            self.save(arm, self._summarize(arm, result))
            print(
                f"[rm-evidence] {len(self.finished(arms))}/{len(arms)} {arm.key} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    def finished(self, arms: list[Arm]) -> list[dict]:
        return [r for r in (self.done(a) for a in arms) if r is not None]

    def _summarize(self, arm: Arm, result: Any) -> dict:
        cfg = arm_config(self.base, self.ev, arm)
        data = self.splits(cfg)
        out: dict[str, Any] = dataclasses.asdict(arm) | {"final_loss": result.final_loss}
        if arm.experiment == "ensemble":
            out["margins"] = result.margins["train"].tolist()
            return out
        for split in ("test", "shifted"):
            out[f"{split}_truth_accuracy"] = truth_accuracy(result.margins[split], data[split])
            out[f"{split}_label_accuracy"] = float((result.margins[split] > 0).float().mean())
        if result.prompt_free_gaps:
            dr2 = result.prompt_free_gaps["test"]
            dr = result.margins["test"]
            out["test_style_gap_dr2"] = _style_gap(dr2, data["test"])
            share = dr2.abs() / ((dr - dr2).abs() + dr2.abs()).clamp_min(1e-8)
            out["test_prompt_free_share"] = float(share.mean())
        return out


def _member_index(arm: Arm) -> int:
    return int(arm.method.removeprefix("member")) if arm.experiment == "ensemble" else 0


def strength_from_members(grid: Grid, members: list[Arm]) -> dict[tuple, torch.Tensor]:
    """(eps, seed) -> (P,) strength mu over that ensemble's members; flip detection is
    saved to `strength_<eps>_<seed>.json`."""
    from ray_rlhf.algo.strength import preference_strength
    from ray_rlhf.loops.strength import flip_detection

    groups: dict[tuple, list[torch.Tensor]] = {}
    for arm in members:
        result = grid.done(arm)
        groups.setdefault((arm.level, arm.seed), []).append(torch.tensor(result["margins"]))
    strengths = {}
    for (eps, seed), margins in groups.items():
        mu = preference_strength(torch.stack(margins)).mean
        strengths[(eps, seed)] = mu
        cfg = arm_config(grid.base, grid.ev, Arm("ensemble", "member0", eps, seed))
        flipped = torch.tensor(grid.splits(cfg)["train"]["label_flipped"], dtype=torch.bool)
        stats = flip_detection(mu, flipped) | {
            "negative_share": float((mu < 0).float().mean()),
            "flipped_share": float(flipped.float().mean()),
        }
        path = grid.run_dir / f"strength_{eps:g}_{seed}.json"
        path.write_text(json.dumps(stats))
    return strengths


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(grid: Grid, arms: list[Arm], seconds: float) -> str:
    """Markdown tables (mean ± std over seeds, and per seed) of truth accuracy."""
    results = grid.finished(arms)
    ev = grid.ev
    lines = [
        "# RM methods on the toy world (issue 4 evidence)",
        "",
        f"Seeds {list(ev.seeds)}; accuracy = share of pairs with unequal true reward whose "
        "truly better response the RM scores higher (ties skipped). `test`: pref_test; "
        "`shifted`: pref_shifted (style token on the worse response with probability "
        f"{grid.base.data.toyworld.shifted_style_on_worse}). Grid wall time {seconds / 60:.1f} "
        "min. Mean ± std over seeds, then per seed.",
        "",
        f"## Preference strength (annotator bias {ev.strength_bias:g})",
        "",
        "| eps | loss | test | shifted | per seed (test) |",
        "|---|---|---|---|---|",
    ]
    for eps in ev.noise_levels:
        for loss in ev.strength_losses:
            rows = [
                r
                for r in results
                if r["experiment"] == "strength" and r["method"] == loss and r["level"] == eps
            ]
            rows.sort(key=lambda r: r["seed"])
            test = [r["test_truth_accuracy"] for r in rows]
            shifted = [r["shifted_truth_accuracy"] for r in rows]
            per_seed = " / ".join(f"{v:.3f}" for v in test)
            lines.append(
                f"| {eps:g} | {loss} | {_mean_std(test)} | {_mean_std(shifted)} | {per_seed} |"
            )
    lines += [
        "",
        f"Flip detection by mu < 0 (ensemble of {grid.base.rm.ensemble_members}, on pref_train):",
        "",
        "| eps | seed | flipped | mu < 0 | precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    for eps in ev.noise_levels:
        for seed in ev.seeds:
            path = grid.run_dir / f"strength_{eps:g}_{seed}.json"
            if path.exists():
                s = json.loads(path.read_text())
                lines.append(
                    f"| {eps:g} | {seed} | {s['flipped_share']:.3f} | {s['negative_share']:.3f} "
                    f"| {s['precision']:.3f} | {s['recall']:.3f} |"
                )
    lines += [
        "",
        f"## Decomposition (label noise {ev.decomposition_noise:g})",
        "",
        "| bias | loss | test | shifted | prompt-free share (test) | style gap of dr2 | "
        "per seed (shifted) |",
        "|---|---|---|---|---|---|---|",
    ]
    for bias in ev.bias_levels:
        for method in ("plain", "prioritized"):
            rows = [
                r
                for r in results
                if r["experiment"] == "decomposition"
                and r["method"] == method
                and r["level"] == bias
            ]
            rows.sort(key=lambda r: r["seed"])
            cols = [
                _mean_std([r[k] for r in rows])
                for k in (
                    "test_truth_accuracy",
                    "shifted_truth_accuracy",
                    "test_prompt_free_share",
                    "test_style_gap_dr2",
                )
            ]
            per_seed = " / ".join(f"{r['shifted_truth_accuracy']:.3f}" for r in rows)
            lines.append(f"| {bias:g} | {method} | {' | '.join(cols)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def plot(grid: Grid, arms: list[Arm], path: Path) -> None:
    """Bar charts of test / shifted truth accuracy (mean, std error bars) per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = grid.finished(arms)
    ev = grid.ev
    panels = [
        (f"strength, eps={eps:g}", "strength", eps, ev.strength_losses) for eps in ev.noise_levels
    ]
    panels += [
        (f"decomposition, bias={b:g}", "decomposition", b, ("plain", "prioritized"))
        for b in ev.bias_levels
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, experiment, level, methods) in zip(axes[0], panels, strict=True):
        for j, split in enumerate(("test", "shifted")):
            means, errs = [], []
            for method in methods:
                vals = [
                    r[f"{split}_truth_accuracy"]
                    for r in results
                    if r["experiment"] == experiment
                    and r["method"] == method
                    and r["level"] == level
                ]
                means.append(statistics.mean(vals) if vals else 0.0)
                errs.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            xs = [i + 0.4 * j for i in range(len(methods))]
            ax.bar(xs, means, width=0.4, yerr=errs, label=split, capsize=2)
        ax.set_xticks([i + 0.2 for i in range(len(methods))])
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0.0, 1.0)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)  # chance
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("truth accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_arms(ev: RMEvidenceConfig, members: int) -> tuple[list[Arm], list[Arm], list[Arm]]:
    """(ensemble members, strength arms, decomposition arms) of the grid."""
    grid = itertools.product
    ensemble = [
        Arm("ensemble", f"member{m}", eps, s)
        for eps, s, m in grid(ev.noise_levels, ev.seeds, range(members))
    ]
    strength = [
        Arm("strength", loss, eps, s)
        for eps, loss, s in grid(ev.noise_levels, ev.strength_losses, ev.seeds)
    ]
    decomposition = [
        Arm("decomposition", m, b, s)
        for b, m, s in grid(ev.bias_levels, ("plain", "prioritized"), ev.seeds)
    ]
    return ensemble, strength, decomposition


def run(base: RLHFConfig, ev: RMEvidenceConfig) -> Path:
    """Run the grid (resuming saved arms) and write the report; returns `evidence.md`."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops import sft
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(base)
    base = preflight(base, run_dir, ("sft", "rm"))  # toy data checks; resolves the token limits
    start = time.perf_counter()
    started = init_ray(base.resources, min_cpus=base.learner.num_workers)
    try:
        if ev.sft_policy is not None:
            policy = Path(ev.sft_policy)
        elif (run_dir / "policy" / "config.json").exists():
            policy = run_dir / "policy"
        else:
            policy = sft.run(base, run_dir).policy_dir
        grid = Grid(base, ev, run_dir, policy.resolve())
        ensemble, strength, decomposition = build_arms(ev, base.rm.ensemble_members)
        grid.run(ensemble + decomposition)  # both need nothing but the data
        grid.run(strength, strength_from_members(grid, ensemble))
    finally:
        shutdown_ray(started)
    seconds = time.perf_counter() - start
    arms = strength + decomposition
    out = run_dir / "evidence.md"
    out.write_text(report(grid, arms, seconds))
    plot(grid, arms, run_dir / "evidence.png")
    print(out.read_text(), flush=True)
    return out


def main(argv: list[str]) -> int:
    """`python jobs/rm_evidence.py [--config FILE] [section.key=value ...]`; the grid's own
    keys are `evidence.*` (`RMEvidenceConfig`)."""
    import argparse

    from ray_rlhf.config import ConfigError, load_config_with

    parser = argparse.ArgumentParser(prog="rm_evidence", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML with RLHFConfig sections and `evidence`")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    try:
        base, extra = load_config_with(
            args.config, args.overrides, ("run.name=rm_evidence",), {"evidence": RMEvidenceConfig}
        )
    except ConfigError as exc:
        print(f"rm_evidence: config error: {exc}")
        return 2
    run(base, extra["evidence"])
    return 0
