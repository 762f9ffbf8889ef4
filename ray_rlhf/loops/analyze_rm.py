"""`ray-rlhf analyze-rm`: how much of a reward model's decisions on a dataset are prompt-free.

Mao et al. 2025 (arXiv 2504.06020), docs/algorithms.md §1. Every pair (x, y_w, y_l) is
scored under its own prompt (dr = r(x, y_w) - r(x, y_l)) and under `rm.prompt_free_prompts`
other prompts of the dataset (drawn uniformly, seeded): dr2 = logit(mean_m sigma(dr(x'_m)))
is the part of the preference the responses alone decide, dr1 = dr - dr2 the part that
needs the prompt. Printed and written to `analysis.json` (per pair: `analysis.parquet`):

- accuracy of dr, and of dr1 and dr2 alone, against the dataset labels (and against the
  ground truth when the data has `chosen_true_reward` / `rejected_true_reward`, ties
  skipped);
- `prompt_free_decided`: share of pairs whose decision the prompt-free part alone makes
  (sign(dr2) = sign(dr) and |dr2| > |dr1|);
- `prompt_free_share`: mean |dr2| / (|dr1| + |dr2|);
- with `chosen_style` / `rejected_style` columns (the toy's planted feature): the mean dr2
  of pairs where only the chosen / only the rejected response has the feature.
Runs in the calling process (no Ray): one reward model, a few thousand forwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.config import ConfigError, RLHFConfig
from ray_rlhf.data.errors import DataValidationError


def decompose_pairs(
    source: Any, prompts: list[str], chosen: list[str], rejected: list[str], m: int, seed: int
) -> dict[str, torch.Tensor]:
    """dr, dr2, dr1 of P pairs, scoring each under m other prompts of the list.

    Args:
        source: A raw scorer with `score_texts` (`ModelSource` or `RuleSource`).
        prompts, chosen, rejected: (P,) texts; P >= 2.
        m: Other prompts per pair.
        seed: Seeds the draw of the other prompts.

    Returns:
        `gap` (P,), `prompt_free_gap` (P,), `prompt_related_gap` (P,), float32.
    """
    from ray_rlhf.algo.decompose import (
        cross_prompt_gaps,
        in_batch_alternative_indices,
        prompt_related_gap,
    )

    pairs = len(prompts)
    done = [True] * pairs
    gap = source.score_texts(prompts, chosen, done) - source.score_texts(prompts, rejected, done)
    alt = in_batch_alternative_indices(pairs, m, torch.Generator().manual_seed(seed))  # (P, M)
    alt_prompts = [prompts[a] for a in alt.reshape(-1).tolist()]
    flat_done = [True] * len(alt_prompts)

    def cross(responses: list[str]) -> torch.Tensor:
        repeated = [r for r in responses for _ in range(m)]
        return source.score_texts(alt_prompts, repeated, flat_done).view(pairs, m)

    dr2 = cross_prompt_gaps((cross(chosen) - cross(rejected)).float()).prompt_free_gap
    gap = gap.float()
    return {
        "gap": gap,
        "prompt_free_gap": dr2,
        "prompt_related_gap": prompt_related_gap(gap, dr2),
    }


def summarize(parts: dict[str, torch.Tensor], dataset: Any) -> dict[str, Any]:
    """The numbers listed in the module docstring, from `decompose_pairs` output."""
    dr, dr2, dr1 = parts["gap"], parts["prompt_free_gap"], parts["prompt_related_gap"]
    out: dict[str, Any] = {
        "pairs": int(dr.numel()),
        "accuracy": float((dr > 0).float().mean()),
        "accuracy_prompt_related_only": float((dr1 > 0).float().mean()),
        "accuracy_prompt_free_only": float((dr2 > 0).float().mean()),
        "prompt_free_decided": float(
            ((torch.sign(dr2) == torch.sign(dr)) & (dr2.abs() > dr1.abs())).float().mean()
        ),
        "prompt_free_share": float((dr2.abs() / (dr1.abs() + dr2.abs()).clamp_min(1e-8)).mean()),
    }
    columns = dataset.column_names
    if {"chosen_true_reward", "rejected_true_reward"} <= set(columns):
        truth = torch.tensor(dataset["chosen_true_reward"]) - torch.tensor(
            dataset["rejected_true_reward"]
        )
        keep = truth != 0
        for name, values in (("", dr), ("_prompt_related_only", dr1), ("_prompt_free_only", dr2)):
            agree = (values[keep] > 0) == (truth[keep] > 0)
            out[f"truth_accuracy{name}"] = float(agree.float().mean())
    if {"chosen_style", "rejected_style"} <= set(columns):
        style = (
            torch.tensor(dataset["chosen_style"]).int()
            - torch.tensor(dataset["rejected_style"]).int()
        )
        for name, value in (("chosen_only", 1), ("rejected_only", -1), ("same", 0)):
            sel = style == value
            out[f"prompt_free_gap_style_{name}"] = float(dr2[sel].mean()) if sel.any() else None
    return out


def _load(cfg: RLHFConfig, run_dir: Path, tokenizer: Any) -> tuple[Any, str]:
    """The validated pairs to analyze (`data.preferences_path`, else the toy's pref_test),
    prompts rendered as the reward model's tokenizer renders them (`data.chat_template`)."""
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.loops.common import toyworld_files

    source = cfg.data.preferences_path or str(toyworld_files(cfg, run_dir)["pref_test"])
    dataset = load_preferences(source, tokenizer=tokenizer, chat_template=cfg.data.chat_template)
    if dataset.num_rows < 2:
        raise DataValidationError(source, f"{dataset.num_rows} pair: need at least 2 prompts")
    return dataset, source


def run_job(cfg: RLHFConfig) -> dict[str, Any]:
    """`ray-rlhf analyze-rm reward.model_path=DIR [data.preferences_path=FILE]`."""
    from ray_rlhf.config import dump_config
    from ray_rlhf.logs import console_print
    from ray_rlhf.loops.common import CONFIG_FILE, mark_done, prepare_run_dir
    from ray_rlhf.models.checkpoint import save_json_atomic
    from ray_rlhf.reward.scorer import ModelSource

    if cfg.reward.model_path is None:
        raise ConfigError("reward.model_path: analyze-rm needs a reward model dir")
    start = time.perf_counter()
    source_model = ModelSource(
        cfg.reward.model_path,
        policy_dir=None,
        trust_remote_code=cfg.model.trust_remote_code,
        threads=torch.get_num_threads(),
    )  # validates the directory before the data work
    run_dir = prepare_run_dir(cfg)
    dump_config(cfg, run_dir / CONFIG_FILE)  # no preflight here
    dataset, data_source = _load(cfg, run_dir, source_model.tokenizer)
    parts = decompose_pairs(
        source_model,
        list(dataset["prompt"]),
        list(dataset["chosen"]),
        list(dataset["rejected"]),
        cfg.rm.prompt_free_prompts,
        cfg.run.seed,
    )
    summary = {"reward_model": cfg.reward.model_path, "data": data_source}
    summary |= summarize(parts, dataset)
    summary["seconds"] = time.perf_counter() - start
    save_json_atomic(run_dir / "analysis.json", summary)
    table = dataset.select_columns(["id"])
    for name, values in parts.items():
        table = table.add_column(name, values.tolist())
    table.to_parquet(str(run_dir / "analysis.parquet"))
    console_print(format_summary(summary))
    mark_done(run_dir, summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column text table."""
    width = max(len(k) for k in summary)
    lines = ["[analyze-rm] prompt-free / prompt-related decomposition"]
    for key, value in summary.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)
