"""`ray-rlhf meta-rm`: a reward model meta-learned over the training domains.

Jia 2024, arXiv 2402.14760 (docs/algorithms.md §4, docs/meta_rm.md):

    pairs grouped by `domain` ──► outer step t: `meta.domains_per_step` domains, one Ray task
        each (K inner steps from π_ref under r_φ, outer loss on held-in pairs, dF_d/dφ)
    ──► driver: mean meta-gradient, Adam step on φ ──► meta_state/ (atomic) + metrics row
    ──► after the last step: reward_model/ (the layout and metadata `train-rm` writes)

The outer step runs on the driver, not in a Ray Train worker: it is one Adam step on a
domain-averaged gradient of a model small enough to hold in one process, and the driver
already owns φ, its optimizer and the run's state (one owner, saved after every step). A
worker group would add its start-up and a process group for nothing to shard.

Resume: rerunning the same command on an unfinished run dir restores `meta_state/` and
continues at the next outer step (metrics rows past the saved step are dropped); batches
and sampling seeds depend only on the step, so the rerun sees what the first run would.

Chaos hook (tests): `pause_meta_after_steps: n` in `<run dir>/control.yaml` makes the job
write `control.yaml.paused` once outer step n is saved and wait until the key changes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_rlhf.chaos import pause_if_asked
from ray_rlhf.config import RLHFConfig
from ray_rlhf.learner.meta_rm import DomainData
from ray_rlhf.loops.common import prepare_base_model
from ray_rlhf.progress import Row, StageBar, StageProgress, metrics_postfix

logger = logging.getLogger(__name__)

STATE_DIR = "meta_state"
METRICS_DIR = "meta"
DOMAIN_COLUMN = "domain"


@dataclass(frozen=True)
class MetaRMResult:
    """Where the meta-learned reward model is, its held-out accuracy, and the cost."""

    reward_model_dir: Path
    base_dir: Path
    eval_accuracy: float
    seconds: float
    seconds_per_step: float
    """Mean wall time of the outer steps this invocation ran (NaN if it ran none)."""


def _load_datasets(cfg: RLHFConfig, run_dir: Path, tokenizer: Any) -> tuple[Any, Any, str]:
    """Validated (train, held-out) preference datasets and the train source's name."""
    from ray_rlhf.loops.rm import load_pair_splits

    train, held_out, source = load_pair_splits(cfg, run_dir, tokenizer)
    return train, held_out, "pref_train" if cfg.data.preferences_path is None else source


def load_domains(
    cfg: RLHFConfig, run_dir: Path, policy_dir: Path
) -> tuple[dict[str, DomainData], dict[str, torch.Tensor]]:
    """The training pairs split by their `domain` column, and the tokenized held-out pairs.

    Raises:
        ValueError: Naming the source: no `domain` column, fewer domains than
            `meta.domains_per_step`, or a domain with fewer pairs than one outer step reads.
    """
    from ray_rlhf.data.tokenize import encode_prompts
    from ray_rlhf.loops.rm import tokenize_pairs
    from ray_rlhf.models.builders import load_tokenizer

    tokenizer = load_tokenizer(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
    train, held_out, source = _load_datasets(cfg, run_dir, tokenizer)
    if DOMAIN_COLUMN not in train.column_names:
        raise ValueError(
            f"{source}: meta-rm needs a {DOMAIN_COLUMN!r} column naming each pair's domain"
        )
    max_length = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 2
    need = cfg.meta.inner_prompts + cfg.meta.outer_pairs
    domains = {}
    column = train[DOMAIN_COLUMN]
    for name in sorted(set(column)):
        rows = train.select([i for i, domain in enumerate(column) if domain == name])
        if rows.num_rows < need:
            raise ValueError(
                f"{source}: domain {name!r} has {rows.num_rows} pairs; one outer step reads "
                f"meta.inner_prompts + meta.outer_pairs = {need}"
            )
        domains[name] = DomainData(
            prompts=encode_prompts(tokenizer, rows["prompt"]),
            pairs=tokenize_pairs(rows, tokenizer, max_length),
        )
    if len(domains) < cfg.meta.domains_per_step:
        raise ValueError(
            f"{source}: {len(domains)} domains, fewer than meta.domains_per_step "
            f"({cfg.meta.domains_per_step})"
        )
    return domains, tokenize_pairs(held_out, tokenizer, max_length)


def _postfix(row: Row) -> str:
    """The meta-rm bar's metrics of the newest outer step."""
    fields = [
        ("outer loss", "meta/outer_loss", ".4f"),
        ("acc", "meta/outer_accuracy", ".3f"),
        ("inner reward", "meta/inner_reward", "+.3f"),
        ("ref", "meta/inner_reward_ref", "+.3f"),
        ("kl", "meta/kl", ".4f"),
    ]
    return metrics_postfix(row, fields)


def _metadata(
    cfg: RLHFConfig, policy_dir: Path, ev: dict[str, float], pairs: int, step: int
) -> dict[str, Any]:
    """`ray_rlhf.json` of the exported model: the keys `train-rm` writes."""
    return {
        "stage": "meta_rm",
        "step": step,
        "base_model": str(policy_dir.resolve()),
        "head": "scalar",
        "training": dataclasses.asdict(cfg.meta),
        "eval_accuracy": ev["eval/accuracy"],
        "eval_pairs": pairs,
        "normalization": {
            "mean": ev["eval/score_mean"],
            "std": ev["eval/score_std"],
            "responses": 2 * pairs,
        },
    }


def run(cfg: RLHFConfig, run_dir: Path, policy_dir: Path) -> MetaRMResult:
    """Meta-train r_φ from π_ref = `policy_dir` (resuming if state exists); Ray must be up."""
    from ray_rlhf.distributed.meta_rm import AdapterSpec, domain_meta_gradients
    from ray_rlhf.learner.meta_rm import MetaRMLearner, domain_batches
    from ray_rlhf.metrics import MetricsWriter
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.models.checkpoint import save_hf_model

    start = time.perf_counter()
    meta = cfg.meta
    domains, held_out = load_domains(cfg, run_dir, policy_dir)
    rm_dir = Path(meta.rm_init_path or policy_dir).resolve()
    learner = MetaRMLearner(rm_dir, meta, seed=cfg.run.seed)
    resumed = learner.restore(run_dir / STATE_DIR)
    logger.info(
        "meta-rm: %d domains (%s), %d per step, K=%d (%s), adapt %s; %s",
        len(domains),
        ", ".join(domains),
        meta.domains_per_step,
        meta.inner_steps,
        meta.order,
        meta.adapt,
        f"resuming at outer step {learner.step + 1}" if resumed else "starting",
    )
    spec = AdapterSpec(
        str(Path(policy_dir).resolve()), str(rm_dir), meta, cfg.data.max_response_tokens
    )
    times = []
    progress = StageProgress("meta-rm", meta.outer_steps, "step", _postfix)
    writer = MetricsWriter(run_dir / METRICS_DIR, resume_step=learner.step)
    with writer, StageBar(progress) as bar:
        for step in range(learner.step, meta.outer_steps):
            tick = time.perf_counter()
            batches = domain_batches(domains, meta, step, cfg.run.seed)
            results = domain_meta_gradients(
                spec, learner.weights(), batches, cfg.resources.custom_resources
            )
            metrics = learner.apply(results)
            times.append(time.perf_counter() - tick)
            metrics["timing/outer_step"] = times[-1]
            writer.log(learner.step, metrics)
            learner.save(run_dir / STATE_DIR)
            bar.show(learner.step, metrics)
            pause_if_asked(
                run_dir / "control.yaml", "pause_meta_after_steps", learner.step, "meta-rm"
            )
    ev = learner.evaluate(held_out)
    pairs = int(held_out["chosen_input_ids"].shape[0])
    out = run_dir / "reward_model"
    tokenizer = load_tokenizer(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
    save_hf_model(
        learner.rm, tokenizer, out, metadata=_metadata(cfg, policy_dir, ev, pairs, learner.step)
    )
    per_step = sum(times) / len(times) if times else float("nan")
    return MetaRMResult(out, policy_dir, ev["eval/accuracy"], time.perf_counter() - start, per_step)


def run_job(cfg: RLHFConfig) -> MetaRMResult:
    """`ray-rlhf meta-rm` / `jobs/meta_rm.py`: run dir, Ray, meta-training, marker."""
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    policy_dir = prepare_base_model(cfg, run_dir)
    cfg = preflight(cfg, run_dir, ("rm",), base_dir=policy_dir)
    need = cfg.meta.domains_per_step * cfg.meta.cpus_per_task
    started = init_ray(cfg.resources, min_cpus=need)
    try:
        result = run(cfg, run_dir, policy_dir)
    finally:
        shutdown_ray(started)
    logger.info(
        "meta-rm: reward model written to %s (eval accuracy %.3f, %.1f s per outer step)",
        result.reward_model_dir,
        result.eval_accuracy,
        result.seconds_per_step,
    )
    mark_done(
        run_dir,
        {
            "reward_model_dir": str(result.reward_model_dir),
            "eval_accuracy": result.eval_accuracy,
            "seconds": result.seconds,
            "seconds_per_outer_step": result.seconds_per_step,
        },
    )
    return result
