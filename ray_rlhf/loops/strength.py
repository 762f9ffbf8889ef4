"""`ray-rlhf preference-strength`: an ensemble of reward models annotates every pair.

Wang et al. 2024, "Secrets of RLHF Part II" (arXiv 2401.06080), docs/algorithms.md §3a:
M reward models (`rm.ensemble_members`, different seeds and data orders) are trained on the
preference data; each pair gets its margin under every model, d_im, and the dataset is
written back with the strength mu_i = mean_m d_im (`strength`) and the spread
s_i = std_m d_im (`strength_std`). `train-rm` with `rm.loss=flip|margin|...` reads it.

    pairs ──► M × Ray task (train one RM, score every pair) ──► members/member_XX.parquet
          ──► checks (ids match the dataset) ──► preferences_strength.parquet + summary

Each member's margins are saved as soon as it finishes, so a rerun of an interrupted job
trains only the missing members. Members score the pairs they were trained on, as in the
paper; with many epochs a member memorizes noisy labels and mu_i < 0 gets rarer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.config import RLHFConfig
from ray_rlhf.loops.common import prepare_base_model, toyworld_files
from ray_rlhf.loops.rm import STRENGTH_COLUMN, tokenize_pairs

logger = logging.getLogger(__name__)

OUTPUT_FILE = "preferences_strength.parquet"
MEMBERS_DIR = "members"


def member_seed(cfg: RLHFConfig, member: int) -> int:
    """Seed of ensemble member `member` (head init and data order)."""
    return cfg.run.seed * 1000 + member


def _write_parquet(columns: dict[str, list[Any]], path: Path) -> None:
    """Write columns as parquet atomically (a reader never sees a half-written file)."""
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    Dataset.from_dict(columns).to_parquet(str(tmp))
    os.replace(tmp, path)


def read_member_margins(path: Path, ids: list[str]) -> torch.Tensor:
    """A member's margins, in the dataset's row order.

    Args:
        path: Parquet file with columns `id` and `margin`.
        ids: The dataset's pair ids, in row order.

    Returns:
        (P,) float32 margins aligned with `ids`.

    Raises:
        ValueError: Naming the file: missing columns, duplicate ids, ids that are not the
            dataset's (first missing and first unknown id), non-finite margins.
    """
    from datasets import Dataset

    table = Dataset.from_parquet(str(path))
    missing = {"id", "margin"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected 'id', 'margin'")
    member_ids = [str(i) for i in table["id"]]
    if len(set(member_ids)) != len(member_ids):
        raise ValueError(f"{path}: duplicate pair ids")
    position = {pair_id: row for row, pair_id in enumerate(member_ids)}
    absent = [i for i in ids if i not in position]
    unknown = sorted(set(member_ids) - set(ids))
    if absent or unknown:
        raise ValueError(
            f"{path}: pair ids do not match the preference dataset ({len(absent)} missing, "
            f"first {absent[:1]}; {len(unknown)} not in the dataset, first {unknown[:1]}); "
            "was it written for another dataset? delete it to retrain that member"
        )
    margins = torch.tensor(table["margin"], dtype=torch.float32)[[position[i] for i in ids]]
    bad = (~torch.isfinite(margins)).nonzero()
    if len(bad):
        raise ValueError(f"{path}: margin of pair {ids[int(bad[0])]!r} is not finite")
    return margins


def flip_detection(mu: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """How well mu < 0 finds the labels known to be flipped (the toy's `label_flipped`).

    Args:
        mu: (P,) strengths.
        flipped: (P,) bool, True where the label was flipped.

    Returns:
        `precision` and `recall` of mu < 0 as a flip detector (NaN when undefined).
    """
    negative = mu < 0
    hits = float((negative & flipped).sum())
    return {
        "precision": hits / float(negative.sum()) if negative.any() else float("nan"),
        "recall": hits / float(flipped.sum()) if flipped.any() else float("nan"),
    }


def _load_pairs(cfg: RLHFConfig, run_dir: Path, base_dir: Path) -> tuple[Any, str]:
    """The validated preference dataset to annotate and where it came from."""
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.models.builders import load_tokenizer

    source = cfg.data.preferences_path or str(toyworld_files(cfg, run_dir)["pref_train"])
    tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    dataset = load_preferences(
        source,
        tokenizer=tokenizer,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        max_response_tokens=cfg.data.max_response_tokens,
        chat_template=cfg.data.chat_template,
    )
    return dataset, source


def _train_missing_members(
    cfg: RLHFConfig, base_dir: Path, dataset: Any, members_dir: Path
) -> None:
    """Train every member whose margins file is absent, saving each as it finishes."""
    from ray_rlhf.data.limits import max_sequence_tokens
    from ray_rlhf.distributed.ensemble import train_members
    from ray_rlhf.models.builders import load_tokenizer

    todo = [
        m
        for m in range(cfg.rm.ensemble_members)
        if not (members_dir / f"member_{m:02d}.parquet").exists()
    ]
    logger.info(
        "strength: %d pairs, %d members (%d to train), %d steps each",
        dataset.num_rows,
        cfg.rm.ensemble_members,
        len(todo),
        cfg.rm.steps,
    )
    if not todo:
        return
    tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    pairs = tokenize_pairs(dataset, tokenizer, max_sequence_tokens(cfg.data))
    pairs.pop(STRENGTH_COLUMN, None)  # a re-annotated dataset: members train on labels only
    seeds = [member_seed(cfg, m) for m in todo]
    start = time.perf_counter()
    for i, margins in train_members(cfg, base_dir, pairs, {"pairs": pairs}, seeds):
        member = todo[i]
        _write_parquet(
            {"id": list(dataset["id"]), "margin": margins["pairs"].tolist()},
            members_dir / f"member_{member:02d}.parquet",
        )
        agree = float((margins["pairs"] > 0).float().mean())
        logger.info(
            "strength: member %d done (%.0f s): agrees with %.3f of the labels",
            member,
            time.perf_counter() - start,
            agree,
        )


def annotate(cfg: RLHFConfig, run_dir: Path, base_dir: Path) -> dict[str, Any]:
    """Train the missing members, then write the strength-annotated dataset.

    Returns:
        The summary (also printed): output path, pairs, members, share of mu < 0, mean
        spread, and flip-detection precision / recall when the data has `label_flipped`.
    """
    from ray_rlhf.algo.strength import preference_strength

    dataset, source = _load_pairs(cfg, run_dir, base_dir)
    members_dir = run_dir / MEMBERS_DIR
    _train_missing_members(cfg, base_dir, dataset, members_dir)
    ids = list(dataset["id"])
    margins = torch.stack(
        [
            read_member_margins(members_dir / f"member_{m:02d}.parquet", ids)
            for m in range(cfg.rm.ensemble_members)
        ]
    )  # (M, P)
    stats = preference_strength(margins)
    columns = {name: dataset[name] for name in dataset.column_names}
    columns |= {STRENGTH_COLUMN: stats.mean.tolist(), "strength_std": stats.std.tolist()}
    out = run_dir / OUTPUT_FILE
    _write_parquet(columns, out)
    summary: dict[str, Any] = {
        "output": str(out),
        "source": source,
        "pairs": len(ids),
        "members": cfg.rm.ensemble_members,
        "negative_share": float((stats.mean < 0).float().mean()),
        "mean_strength": float(stats.mean.mean()),
        "mean_spread": float(stats.std.mean()),
    }
    if "label_flipped" in dataset.column_names:
        flipped = torch.tensor(dataset["label_flipped"], dtype=torch.bool)
        summary["flip_detection"] = flip_detection(stats.mean, flipped)
    logger.info("strength: %s", json.dumps(summary))
    return summary


def run_job(cfg: RLHFConfig) -> dict[str, Any]:
    """`ray-rlhf preference-strength` / `jobs/preference_strength.py`."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("rm",))
    base_dir = prepare_base_model(cfg, run_dir)
    started = init_ray(cfg.resources, min_cpus=cfg.learner.cpus_per_worker)
    try:
        summary = annotate(cfg, run_dir, base_dir)
    finally:
        shutdown_ray(started)
    mark_done(run_dir, summary)
    return summary
