"""`ray-rlhf iterate`: R rounds of policy samples -> reward-model update -> PPO.

    π₀ = model.path (or SFT of the tiny model, phase `sft/`)     RM₀ = reward.model_path or none
    round r = 1..R, under runs/<name>/round_<r>/:
      samples/  k responses per prompt of π_{r-1} from the rollout pool (`loops.baselines`),
                scored by the toy world's truth when the prompts are the toy world's;
                `meta_responses.parquet` (prompts with k non-empty responses)
      rm/       RM_r: RM_{r-1} continued (round 1 without RM₀: trained from π₀), with the
                MetaRM step on samples/ when `rm.meta.enabled`; `reward_model/`
      ppo/      π_r: PPO from π_{r-1} under RM_r; `ppo_policy/`
    iterate_report.md / .json, iterate_curves.png

Every phase is a run of an existing stage (`baselines.run`, `rm.run`, `ppo.run`) on the
same pools and Ray Train learners, in its own dir with its own `config.yaml`. A phase
writes `DONE.json` when complete; rerunning the same command skips the done phases and
continues the first undone one, which resumes from its own shards or checkpoints.

Chaos hook (tests): `pause_iterate_after: round_1/rm` in `<run dir>/control.yaml` makes the
job write `control.yaml.paused` once that phase is done and wait until the key changes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_rlhf.chaos import pause_if_asked
from ray_rlhf.config import IterateConfig, RLHFConfig
from ray_rlhf.loops.common import DONE_MARKER
from ray_rlhf.loops.iterate_plan import (
    META_FILE,
    SFT_PHASE,
    Phase,
    RoundInputs,
    done_phases,
    iterate_section,
    phase_plan,
    ppo_config,
    resume_point,
    rm_config,
    round_inputs,
    sample_rows,
    samples_config,
    start_policy,
)

if TYPE_CHECKING:
    from ray_rlhf.distributed.ppo_trainer import PromptSet

logger = logging.getLogger(__name__)

SAMPLES_FILE = "baselines.parquet"
"""What `loops.baselines` writes into the samples phase dir."""
REPORT = "iterate_report"


def unscored(prompt: str, response: str) -> float:
    """The samples' reward where no ground truth applies (prompts outside the toy world):
    0, so the baseline job's `rewards` column is a placeholder, never read."""
    return 0.0


# ------------------------------------------------------------------------- the phases


def round_prompts(cfg: RLHFConfig, run_dir: Path, policy: Path, r: int) -> PromptSet:
    """Round r's share of PPO's train prompts (`sample_rows`), as one prompt set."""
    from ray_rlhf.loops.ppo import load_prompt_sets
    from ray_rlhf.models.builders import load_tokenizer

    tokenizer = load_tokenizer(policy, trust_remote_code=cfg.model.trust_remote_code)
    train, _ = load_prompt_sets(cfg, run_dir, tokenizer)
    rows = sample_rows(len(train.ids), iterate_section(cfg).sample_prompts, cfg.run.seed, r)
    return dataclasses.replace(
        train,
        ids=[train.ids[i] for i in rows],
        texts=[train.texts[i] for i in rows],
        user_texts=[train.user_texts[i] for i in rows],
    )


def write_meta_responses(rows: list[dict[str, Any]], k: int, out: Path) -> int:
    """MetaRM's input from the samples: prompts with at least k non-empty responses (the
    meta-response loader refuses empty ones), as `id`, `prompt`, `responses`; returns how
    many prompts were kept.

    Raises:
        ValueError: No prompt has k non-empty responses.
    """
    import datasets

    from ray_rlhf.loops.baselines import write_parquet_atomic

    kept = []
    for row in rows:
        responses = [text for text in row["responses"] if text.strip()]
        if len(responses) >= k:
            kept.append({"id": row["prompt_id"], "prompt": row["prompt"], "responses": responses})
    if not kept:
        raise ValueError(
            f"{out.parent}: no prompt has {k} non-empty sampled responses, so MetaRM has "
            "nothing to compare (the policy ends its responses at once; lower rm.meta.k or "
            "look at the last round's policy)"
        )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "responses": datasets.Sequence(datasets.Value("string")),
        }
    )
    write_parquet_atomic(kept, out, features)
    return len(kept)


def read_samples(samples_dir: Path) -> list[dict[str, Any]]:
    """The rows a samples phase wrote (`prompt_id`, `prompt`, `responses`, `rewards`)."""
    import datasets

    return datasets.Dataset.from_parquet(str(samples_dir / SAMPLES_FILE)).to_list()


def run_samples(cfg: RLHFConfig, run_dir: Path, phase: Phase, policy: Path) -> dict[str, Any]:
    """k responses per prompt of `policy` through the rollout pool; the summary says whether
    their rewards are the truth and, if so, their mean."""
    from ray_rlhf.config import dump_config
    from ray_rlhf.loops import baselines

    out = phase.dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = round_prompts(cfg, run_dir, policy, phase.round)
    scfg = samples_config(cfg, out, truth=prompts.toyworld)
    dump_config(scfg, out / "config.yaml")
    result = baselines.run(scfg, out, policy, prompts, stage="samples")
    rows = read_samples(out)
    kept = None
    if cfg.rm.meta.enabled:  # MetaRM's meta responses (plain updates do not read them)
        kept = write_meta_responses(rows, cfg.rm.meta.k, out / META_FILE)
        logger.info(
            "%s: %d of %d prompts have rm.meta.k non-empty responses", phase, kept, len(rows)
        )
    rewards = [v for row in rows for v in row["rewards"]]
    return {
        "policy": str(policy),
        "prompts": result.num_prompts,
        "k": scfg.contrastive.k,
        "meta_prompts": kept,
        "truth": prompts.toyworld,
        "true_reward": sum(rewards) / len(rewards) if prompts.toyworld and rewards else None,
        "seconds": result.seconds,
    }


def sample_accuracy(
    reward_model: Path, rows: list[dict[str, Any]], cfg: RLHFConfig
) -> tuple[float | None, int]:
    """How often `reward_model` orders two sampled responses of one prompt as their true
    rewards do (`algo.group_pair_agreement`; pairs of equal truth skipped), scored in this
    process like `analyze-rm`, every response ending with EOS as MetaRM reads them.

    Args:
        rows: A samples phase's rows whose `rewards` are the truth.

    Returns:
        (accuracy or None without a counted pair, counted pairs).
    """
    import torch

    from ray_rlhf.algo import group_pair_agreement
    from ray_rlhf.reward.scorer import ModelSource

    source = ModelSource(
        str(reward_model),
        policy_dir=None,
        trust_remote_code=cfg.model.trust_remote_code,
        threads=torch.get_num_threads(),
    )
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    responses = [text for row in rows for text in row["responses"]]
    flat = source.score_texts(prompts, responses, [True] * len(responses))  # (N,)
    width = max(len(row["responses"]) for row in rows)
    scores = torch.zeros(len(rows), width, dtype=torch.float64)  # (G, K)
    truth = torch.zeros_like(scores)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    start = 0
    for g, row in enumerate(rows):
        n = len(row["responses"])
        scores[g, :n] = flat[start : start + n]
        truth[g, :n] = torch.tensor(row["rewards"], dtype=torch.float64)
        valid[g, :n] = True
        start += n
    agree, pairs = group_pair_agreement(scores, truth, valid)
    return (agree / pairs if pairs else None), pairs


def run_rm(
    cfg: RLHFConfig, run_dir: Path, phase: Phase, inputs: RoundInputs, pi0: Path
) -> dict[str, Any]:
    """RM_r (see `rm_config`), then its accuracy, and RM_{r-1}'s, on the round's samples
    when their rewards are the truth."""
    from ray_rlhf.config import dump_config
    from ray_rlhf.loops import rm
    from ray_rlhf.models.checkpoint import METADATA_FILE, load_json

    out = phase.dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples_dir = run_dir / f"round_{phase.round}" / "samples"
    rcfg = rm_config(cfg, inputs, samples_dir)
    dump_config(rcfg, out / "config.yaml")
    reward_model = out / "reward_model"
    start = time.perf_counter()
    if not (reward_model / METADATA_FILE).is_file():  # exported last (atomic dir rename)
        rm.run(rcfg, out, pi0)
    summary: dict[str, Any] = {
        "reward_model_dir": str(reward_model),
        "init": rcfg.rm.init_path,
        "steps": rcfg.rm.steps,
        "meta": cfg.rm.meta.enabled,
        "eval_accuracy": float(load_json(reward_model / METADATA_FILE)["eval_accuracy"]),
        "sample_accuracy": None,
        "sample_accuracy_before": None,
        "sample_pairs": 0,
    }
    if load_json(samples_dir / DONE_MARKER)["truth"]:
        rows = read_samples(samples_dir)
        summary["sample_accuracy"], summary["sample_pairs"] = sample_accuracy(
            reward_model, rows, cfg
        )
        if inputs.rm_init is not None:
            summary["sample_accuracy_before"] = sample_accuracy(inputs.rm_init, rows, cfg)[0]
    summary["seconds"] = time.perf_counter() - start
    return summary


_EVAL_KEYS = (
    "eval/sampled/true_reward",
    "eval/greedy/true_reward",
    "eval/sampled/reward",
    "eval/sampled/kl_to_ref",
)


def run_ppo(cfg: RLHFConfig, run_dir: Path, phase: Phase, inputs: RoundInputs) -> dict[str, Any]:
    """π_r: PPO from π_{r-1} under RM_r; the summary holds its last held-out evaluation."""
    from ray_rlhf.config import dump_config
    from ray_rlhf.loops import ppo
    from ray_rlhf.metrics import read_metrics

    out = phase.dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    round_dir = run_dir / f"round_{phase.round}"
    reward_model = round_dir / "rm" / "reward_model"
    pcfg = ppo_config(cfg, round_dir / "samples", reward_model)
    dump_config(pcfg, out / "config.yaml")
    policy_dir = out / "ppo_policy"
    start = time.perf_counter()
    if not (policy_dir / "config.json").is_file():  # exported last (atomic dir rename)
        ppo.run(pcfg, out, inputs.policy)
    evals = [row for row in read_metrics(out / "ppo") if _EVAL_KEYS[2] in row]
    last = evals[-1] if evals else {}
    return {
        "policy_dir": str(policy_dir),
        "start_policy": str(inputs.policy),
        "reward_model": str(reward_model),
        "iterations": cfg.ppo.iterations,
        **{key: last.get(key) for key in _EVAL_KEYS},
        "seconds": time.perf_counter() - start,
    }


def run_sft(cfg: RLHFConfig, run_dir: Path, phase: Phase) -> dict[str, Any]:
    """π₀ when `model.path` is unset: SFT of the tiny model, as `ray-rlhf ppo` does."""
    from ray_rlhf.config import dump_config
    from ray_rlhf.loops import sft

    out = phase.dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    policy_dir, start = out / "policy", time.perf_counter()
    if not (policy_dir / "config.json").is_file():  # exported last (atomic dir rename)
        sft.run(cfg, out)
    return {"policy_dir": str(policy_dir), "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------ the command


@dataclass(frozen=True)
class IterateResult:
    """The last round's policy and reward model, the report's rows, the wall time."""

    policy_dir: Path
    reward_model_dir: Path
    rounds: list[dict[str, Any]]
    seconds: float


def run_phase(cfg: RLHFConfig, run_dir: Path, phase: Phase) -> dict[str, Any]:
    """Runs one phase (its inputs are the earlier phases' outputs) and marks it done."""
    from ray_rlhf.loops.common import mark_done
    from ray_rlhf.progress import stage_label_prefix

    pi0 = start_policy(cfg, run_dir)
    rm0 = Path(cfg.reward.model_path).resolve() if cfg.reward.model_path else None
    with stage_label_prefix(f"round {phase.round}" if phase.round else ""):
        if phase.name == SFT_PHASE:
            summary = run_sft(cfg, run_dir, phase)
        else:
            inputs = round_inputs(run_dir, phase.round, pi0, rm0)
            if phase.name == "samples":
                summary = run_samples(cfg, run_dir, phase, inputs.policy)
            elif phase.name == "rm":
                summary = run_rm(cfg, run_dir, phase, inputs, pi0)
            else:
                summary = run_ppo(cfg, run_dir, phase, inputs)
    mark_done(phase.dir(run_dir), summary)
    logger.info("%s: done (%.0f s)", phase, summary["seconds"])
    pause_if_asked(run_dir / "control.yaml", "pause_iterate_after", phase.key, "iterate")
    return summary


def check_inputs(cfg: RLHFConfig, run_dir: Path) -> RLHFConfig:
    """Everything the rounds read, before Ray starts: `preflight` of the SFT (when
    `model.path` is unset), RM and PPO stages, and the starting RM (`reward.model_path`):
    a scalar reward model of the policy's vocabulary. Returns the resolved config."""
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.preflight import check_rm_init, preflight
    from ray_rlhf.models.builders import load_tokenizer

    stages = ("rm", "ppo") if cfg.model.path else ("sft", "rm", "ppo")
    cfg = preflight(cfg, run_dir, stages)
    if cfg.reward.model_path is not None:
        base = prepare_base_model(cfg, run_dir)
        tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
        check_rm_init(cfg.reward.model_path, cfg, tokenizer, "reward.model_path")
    return cfg


def describe(cfg: RLHFConfig) -> str:
    """The header line on what each round does."""
    it = iterate_section(cfg)
    prompts = f"{it.sample_prompts} prompts" if it.sample_prompts else "all train prompts"
    method = f"MetaRM (eta {cfg.rm.meta.eta:g})" if cfg.rm.meta.enabled else "plain BT"
    later = it.rm_steps if it.rm_steps is not None else cfg.rm.steps
    start_rm = cfg.reward.model_path or f"none (round 1 trains one for {cfg.rm.steps} steps)"
    return (
        f"iterate: {it.rounds} round(s) of {prompts} x {it.k(cfg.rm.meta.k)} samples "
        f"-> {method} RM update ({later} steps) -> PPO ({cfg.ppo.iterations} iterations); "
        f"starting policy {cfg.model.path or 'SFT of the tiny model'}, starting RM {start_rm}"
    )


def run_job(cfg: RLHFConfig) -> IterateResult:
    """`ray-rlhf iterate` / `jobs/iterate.py`: checks, the phases not yet done, the report."""
    from ray_rlhf.config import requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray
    from ray_rlhf.logs import console_print
    from ray_rlhf.loops.common import mark_done, prepare_run_dir
    from ray_rlhf.loops.iterate_report import format_table, write_report

    if cfg.iterate is None:
        cfg = dataclasses.replace(cfg, iterate=IterateConfig())
    start = time.perf_counter()
    run_dir = prepare_run_dir(cfg).resolve()
    cfg = check_inputs(cfg, run_dir)
    plan = phase_plan(iterate_section(cfg).rounds, sft=cfg.model.path is None)
    done = done_phases(run_dir, plan)
    first = resume_point(plan, done)
    logger.info(describe(cfg))
    if first is not None and done:
        logger.info("iterate: resuming at %s (%d of %d phases done)", first, len(done), len(plan))
    if first is not None:
        started = init_ray(cfg.resources, min_cpus=requested_cpus(cfg))
        try:
            for phase in plan[plan.index(first) :]:
                run_phase(cfg, run_dir, phase)
        finally:
            shutdown_ray(started)
    rounds = iterate_section(cfg).rounds
    method = "MetaRM" if cfg.rm.meta.enabled else "plain BT"
    report = write_report(run_dir, rounds, method=method)
    last = run_dir / f"round_{rounds}"
    result = IterateResult(
        last / "ppo" / "ppo_policy",
        last / "rm" / "reward_model",
        report["rounds"],
        time.perf_counter() - start,
    )
    console_print(format_table(report["rounds"], report["curve_key"]) + _written(run_dir))
    mark_done(
        run_dir,
        {
            "policy_dir": str(result.policy_dir),
            "reward_model_dir": str(result.reward_model_dir),
            "rounds": rounds,
            "seconds": result.seconds,
        },
    )
    return result


def _written(run_dir: Path) -> str:
    """Where the outputs are, for the console."""
    return (
        f"\n\nWritten to {run_dir}/: iterate_report.md / .json, iterate_curves.png, config.yaml,\n"
        "  round_<r>/samples/ (baselines.parquet, meta_responses.parquet), round_<r>/rm/"
        "reward_model/ and\n  round_<r>/ppo/ppo_policy/ (HF dirs; metrics under rm/rm/ and "
        "ppo/ppo/), logs/."
    )
