"""Offline baseline sampling for contrastive rewards (docs/algorithms.md §2, Shen et al. 2024).

    prompts ──► RolloutPool (frozen SFT policy, k samples each) ──► RewardPool (scored once)
            ──► shard-NNNNN.parquet per chunk ──► merge ──► baselines.parquet (+ DONE.json)

Resumable: every chunk of `contrastive.chunk_prompts` prompts is written as its own shard
file, atomically (a temp name, then `os.replace`), so a shard is either complete or absent.
A rerun of the same command on the unfinished run dir reads the shards, skips their prompt
ids and samples only the rest; the merged dataset is also written atomically, and the
`DONE.json` marker only after it. The dataset's columns are described in
`ray_rlhf.reward.contrastive`.

Failures: a chunk whose scoring fails is re-scored one sample at a time; a sample that
still fails is left out of its prompt's `rewards` (counted in `num_failed`). A prompt
whose k samples all failed is not in the dataset: it is listed, with the errors, in
`baselines_failed.jsonl`, printed, and counted in `DONE.json`.

Chaos hook (tests): `pause_baselines_after_shards: n` in `<run dir>/control.yaml` makes the
job write `control.yaml.paused` after its n-th new shard and wait there until the key is
removed, so a test can kill the process at a known point.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_rlhf.chaos import pause_if_asked
from ray_rlhf.config import ConfigError, RLHFConfig
from ray_rlhf.data.errors import DataValidationError
from ray_rlhf.progress import StageBar, StageProgress, metrics_postfix
from ray_rlhf.types import RolloutBatch

if TYPE_CHECKING:
    from ray_rlhf.distributed.ppo_trainer import PromptSet

logger = logging.getLogger(__name__)

SHARD_DIR = "baseline_shards"
FAILED_FILE = "baselines_failed.jsonl"
_SEED_OFFSET = 99991  # keeps baseline sampling seeds apart from PPO's per-iteration seeds


@dataclass(frozen=True)
class BaselinesResult:
    """Where the baseline dataset is, what it holds, and how long the job took."""

    path: Path
    num_prompts: int
    failed: list[str]
    seconds: float


def shard_features() -> Any:
    """Column types of shards and of the merged dataset (`error`: shards only)."""
    import datasets

    return datasets.Features(
        {
            "prompt_id": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "rewards": datasets.Sequence(datasets.Value("float64")),
            "responses": datasets.Sequence(datasets.Value("string")),
            "num_failed": datasets.Value("int32"),
            "baseline": datasets.Value("float64"),
            "aggregate": datasets.Value("string"),
            "error": datasets.Value("string"),
        }
    )


def write_parquet_atomic(rows: list[dict[str, Any]], path: Path, features: Any) -> None:
    """`rows` as one parquet file at `path`, written under a temp name and then renamed."""
    import datasets
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(datasets.Dataset.from_list(rows, features=features).data.table, tmp)
    os.replace(tmp, path)


def read_shards(shard_dir: Path) -> list[dict[str, Any]]:
    """Rows of every complete shard (`shard-*.parquet`; temp files are ignored), in order.

    Raises:
        ValueError: If a prompt id appears in two shards (the dir was tampered with).
    """
    import datasets

    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path in sorted(shard_dir.glob("shard-*.parquet")):
        for row in datasets.Dataset.from_parquet(str(path)).to_list():
            if row["prompt_id"] in seen:
                raise ValueError(
                    f"{path}: prompt id {row['prompt_id']!r} is already in {seen[row['prompt_id']]}"
                )
            seen[row["prompt_id"]] = path.name
            rows.append(row)
    return rows


def baseline_prompts(cfg: RLHFConfig, run_dir: Path, policy_dir: Path) -> PromptSet:
    """The prompts to sample: PPO's train prompts, then its eval prompts if configured.

    Raises:
        ValueError: If an id appears in both sets with different texts.
    """
    from ray_rlhf.loops.ppo import load_prompt_sets
    from ray_rlhf.models.builders import load_tokenizer

    tokenizer = load_tokenizer(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
    train, held_out = load_prompt_sets(cfg, run_dir, tokenizer)
    if not cfg.contrastive.include_eval_prompts:
        return train
    known = dict(zip(train.ids, train.texts, strict=True))
    rows = [list(train.ids), list(train.texts), list(train.user_texts)]
    for pid, text, user in zip(held_out.ids, held_out.texts, held_out.user_texts, strict=True):
        if pid not in known:
            for column, value in zip(rows, (pid, text, user), strict=True):
                column.append(value)
        elif known[pid] != text:
            raise DataValidationError(
                cfg.data.eval_prompts_path or "eval prompts",
                f"prompt id {pid!r} names two prompts: {known[pid]!r}, {text!r}",
            )
    return dataclasses.replace(train, ids=rows[0], texts=rows[1], user_texts=rows[2])


def _single_row(batch: RolloutBatch, row: int) -> RolloutBatch:
    """Row `row` of a batch as a one-sample batch (to score samples one by one)."""
    g = row // batch.n_samples
    sl = slice(row, row + 1)
    return dataclasses.replace(
        batch,
        prompt_ids=[batch.prompt_ids[g]],
        prompts=[batch.prompts[g]],
        user_prompts=[batch.user_prompt_of_row(row)],
        responses=[batch.responses[row]],
        input_ids=batch.input_ids[sl],
        attention_mask=batch.attention_mask[sl],
        response_mask=batch.response_mask[sl],
        sample_logprobs=batch.sample_logprobs[sl],
        finished=batch.finished[sl],
        n_samples=1,
    )


def score_rows(reward_pool: Any, batch: RolloutBatch) -> tuple[list[float | None], list[str]]:
    """(N,) rewards, None where a sample failed, and the error texts of failed samples.

    The whole batch is scored at once; if that fails, every sample is re-scored alone.
    """
    from ray.exceptions import RayTaskError

    try:
        return [float(s) for s in reward_pool.score(batch).scores], []
    except (RayTaskError, ValueError) as exc:
        logger.warning("baselines: chunk scoring failed, scoring samples one by one: %s", exc)
    scores: list[float | None] = []
    errors = []
    for row in range(batch.num_samples):
        try:
            scores.append(float(reward_pool.score(_single_row(batch, row)).scores[0]))
        except (RayTaskError, ValueError) as exc:
            scores.append(None)
            errors.append(str(exc).strip().splitlines()[-1])
    return scores, errors


def chunk_rows(
    batch: RolloutBatch, scores: Sequence[float | None], errors: Sequence[str], cfg: RLHFConfig
) -> list[dict[str, Any]]:
    """One shard row per prompt of `batch` (layout: `shard_features`)."""
    from ray_rlhf.reward.contrastive import aggregate_name, aggregator, padded_rewards

    k = batch.n_samples
    rows = []
    for g, (pid, text) in enumerate(zip(batch.prompt_ids, batch.prompts, strict=True)):
        group = range(g * k, (g + 1) * k)
        ok = [i for i in group if scores[i] is not None]
        rewards = [float(scores[i]) for i in ok]  # type: ignore[arg-type]
        baseline = None
        if rewards:
            values, valid = padded_rewards([rewards], k)
            baseline = float(aggregator(cfg.contrastive)(values, valid)[0])
        rows.append(
            {
                "prompt_id": pid,
                "prompt": text,
                "rewards": rewards,
                "responses": [batch.responses[i] for i in ok],
                "num_failed": k - len(ok),
                "baseline": baseline,
                "aggregate": aggregate_name(cfg.contrastive),
                "error": "; ".join(errors) if not rewards else None,
            }
        )
    return rows


def merge_shards(
    rows: list[dict[str, Any]], order: Sequence[str], out: Path, failed_path: Path
) -> list[str]:
    """Writes the dataset (prompts with at least one reward, in `order`) and the failure
    report; returns the failed prompt ids."""
    rank = {pid: i for i, pid in enumerate(order)}
    rows = sorted(rows, key=lambda r: rank.get(r["prompt_id"], len(rank)))
    good = [{k: v for k, v in r.items() if k != "error"} for r in rows if r["rewards"]]
    failed = [r for r in rows if not r["rewards"]]
    features = shard_features()
    del features["error"]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(good, out, features)
    tmp = failed_path.with_name(f".{failed_path.name}.tmp")
    tmp.write_text(
        "".join(
            json.dumps({"prompt_id": r["prompt_id"], "prompt": r["prompt"], "error": r["error"]})
            + "\n"
            for r in failed
        )
    )
    os.replace(tmp, failed_path)
    return [r["prompt_id"] for r in failed]


def run(
    cfg: RLHFConfig,
    run_dir: Path,
    policy_dir: Path,
    prompts: PromptSet | None = None,
    *,
    stage: str = "baselines",
) -> BaselinesResult:
    """Sample, score and store k baselines per prompt; Ray must be initialized.

    Args:
        prompts: The prompts to sample; default `baseline_prompts` (PPO's train prompts,
            and its eval prompts with `contrastive.include_eval_prompts`). A rerun must pass
            the same ones (the shards are keyed by prompt id and sampling seeds by position).
        stage: The progress bar's label.
    """
    from ray_rlhf.loops.ppo import start_pools

    start = time.perf_counter()
    con = cfg.contrastive
    out = Path(con.output_path) if con.output_path else run_dir / "baselines.parquet"
    shard_dir = run_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    if prompts is None:
        prompts = baseline_prompts(cfg, run_dir, policy_dir)
    ids = prompts.ids
    done_rows = read_shards(shard_dir)
    done = {r["prompt_id"] for r in done_rows}
    todo = [i for i, pid in enumerate(ids) if pid not in done]
    logger.info(
        "baselines: %d prompts x %d samples, %d already done (%d shards), %d to sample",
        len(ids),
        con.k,
        len(done),
        len(list(shard_dir.glob("shard-*.parquet"))),
        len(todo),
    )
    if todo:
        pools = start_pools(cfg, policy_dir, contrastive=False)
        try:
            pair = (pools["rollout"], pools["reward"])
            done_rows += _sample(cfg, pair, prompts, todo, run_dir, stage)
        finally:
            for pool in pools.values():
                pool.shutdown()
    failed = merge_shards(done_rows, ids, out, run_dir / FAILED_FILE)
    if failed:
        logger.warning(
            "baselines: %d prompt(s) had no successful sample and are not in %s: %s "
            "(details in %s)",
            len(failed),
            out,
            failed[:10],
            run_dir / FAILED_FILE,
        )
    return BaselinesResult(out, len(ids) - len(failed), failed, time.perf_counter() - start)


def contiguous_chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """Splits sorted prompt indices into chunks of at most `size` consecutive indices."""
    chunks: list[list[int]] = []
    for i in indices:
        if chunks and len(chunks[-1]) < size and chunks[-1][-1] == i - 1:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _sample(
    cfg: RLHFConfig,
    pools: tuple[Any, Any],
    prompts: PromptSet,
    todo: list[int],
    run_dir: Path,
    stage: str = "baselines",
) -> list[dict[str, Any]]:
    """Generates, scores and writes one shard per chunk of the prompts `todo` (indices
    into `prompts`). Sample j of prompt i uses seed base + i * k + j, so a resumed run uses
    the same seeds as an uninterrupted one."""
    con, (rollout, reward) = cfg.contrastive, pools
    shard_dir = run_dir / SHARD_DIR
    base_seed = (cfg.run.seed * 100003 + _SEED_OFFSET) * 2**20
    next_shard = len(list(shard_dir.glob("shard-*.parquet")))
    rows: list[dict[str, Any]] = []
    chunks = contiguous_chunks(todo, con.chunk_prompts)
    with StageBar(StageProgress(stage, len(chunks), "chunk", _postfix)) as bar:
        for n_new, chunk in enumerate(chunks, start=1):
            t0 = time.perf_counter()
            batch = prompts.generate(
                rollout,
                chunk,
                n_samples=con.k,
                max_tokens=cfg.data.max_response_tokens,
                temperature=con.temperature,
                top_p=con.top_p,
                seed=base_seed + chunk[0] * con.k,  # row r of the chunk: + r
            )
            scores, errors = score_rows(reward, batch)
            new = chunk_rows(batch, scores, errors, cfg)
            shard = shard_dir / f"shard-{next_shard:05d}.parquet"
            write_parquet_atomic(new, shard, shard_features())
            next_shard += 1
            rows += new
            seconds = time.perf_counter() - t0
            logger.debug("baselines: %s: %d prompts, %.1f s", shard.name, len(chunk), seconds)
            bar.show(n_new, {"shard/prompts": len(chunk), "shard/seconds": seconds})
            pause_if_asked(
                run_dir / "control.yaml", "pause_baselines_after_shards", n_new, "baselines"
            )
    return rows


def _postfix(row: Mapping[str, Any]) -> str:
    """The baselines bar's note on the newest shard."""
    fields = [("prompts", "shard/prompts", "d"), ("in", "shard/seconds", ".1f")]
    return metrics_postfix(row, fields) + " s"


def run_job(cfg: RLHFConfig) -> BaselinesResult:
    """`ray-rlhf sample-baselines` / `jobs/sample_baselines.py`: run dir, Ray, job, marker."""
    from ray_rlhf.config import requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight
    from ray_rlhf.models.checkpoint import validate_model_dir

    if cfg.model.path is None:
        raise ConfigError("model.path: the frozen SFT policy to sample baselines from is required")
    policy_dir = validate_model_dir(cfg.model.path)
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("ppo",))
    started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
    try:
        result = run(cfg, run_dir, Path(policy_dir))
    finally:
        shutdown_ray(started)
    logger.info(
        "baselines: %d prompts written to %s (%d failed, %.0f s)",
        result.num_prompts,
        result.path,
        len(result.failed),
        result.seconds,
    )
    summary = {
        "baselines_path": str(result.path),
        "num_prompts": result.num_prompts,
        "failed_prompts": result.failed,
        "seconds": result.seconds,
    }
    mark_done(run_dir, summary)
    return result
