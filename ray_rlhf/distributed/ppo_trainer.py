"""PPO as a Ray Train run: generate -> score -> learn -> sync, one iteration per report.

Rank 0 drives the rollout and reward pools (each behind one owner actor the job driver
created, so they and their membership outlive learner restarts), hands every rank its share
of prompt groups through the object store, and pushes the new weights to the rollout pool.
Every rank runs a `PPOLearner` (DeepSpeed). The data
position is the iteration number (`global_batch_indices`), so a restart from the checkpoint
of iteration k replays exactly iteration k + 1.

With `ppo.async_rollouts`, rank 0 submits iteration k + 1's generation before the learn
phase of k and collects it at the start of k + 1: the rollout actors sample with the
weights of version k while the learners train (the sync after k queues behind the
generation on each actor), so the learner at version k + 1 trains on samples one version
old, importance-weighted in the loss. Prompts and seeds of an iteration depend only on its
number; a generation in flight at a restart is discarded and the resumed iteration samples
again with the restored weights.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch

from ray_rlhf.chaos import pause_if_asked
from ray_rlhf.config import RLHFConfig
from ray_rlhf.config_ppo import EVAL_SAMPLED_TEMPERATURE
from ray_rlhf.data.sampler import global_batch_indices
from ray_rlhf.distributed.checkpointing import (
    STORAGE_KEY,
    copy_final_policy,
    report_checkpoint,
    restore_latest,
)
from ray_rlhf.distributed.control import apply_control, chaos_hooks, chaos_in_flight
from ray_rlhf.distributed.rollout_pool import PendingRollout
from ray_rlhf.distributed.trainer import fit_learners, mean_over_ranks, setup_worker
from ray_rlhf.metrics import MetricsWriter
from ray_rlhf.progress import Row, StageProgress, metrics_postfix
from ray_rlhf.reward.segments import segment_batch_metrics
from ray_rlhf.types import RolloutBatch, ScoredBatch, group_range, select_groups

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSet:
    """Prompt ids and texts (train or eval)."""

    ids: list[str]
    texts: list[str]
    """What the model reads (chat-templated where a template applies)."""
    user_texts: list[str]
    """The prompts as the user wrote them (what rule rewards receive)."""
    toyworld: bool
    """True when the toy world's ground truth can score these prompts."""

    def generate(self, pool: Any, rows: list[int], **kwargs: Any) -> RolloutBatch:
        """Samples the prompts `rows` with the rollout pool; the batch carries their user
        texts too (`RolloutBatch.user_prompts`) when they differ from what the model read."""
        return self.collect(pool, self.submit(pool, rows, **kwargs), rows)

    def submit(self, pool: Any, rows: list[int], **kwargs: Any) -> PendingRollout:
        """`generate`, started: returns at once (`RolloutPool.submit`)."""
        return pool.submit([self.ids[i] for i in rows], [self.texts[i] for i in rows], **kwargs)

    def collect(self, pool: Any, pending: PendingRollout, rows: list[int]) -> RolloutBatch:
        """The batch of `submit(pool, rows, ...)`, as `generate` returns it."""
        batch = pool.collect(pending)
        users = [self.user_texts[i] for i in rows]
        return batch if users == pending.prompts else replace(batch, user_prompts=users)


@dataclass
class Launched:
    """Rank 0: one iteration's generation, submitted to the rollout pool."""

    rows: list[int]
    """Prompt indices of the iteration (`global_batch_indices`)."""
    pending: PendingRollout
    waited_s: float = 0.0
    """Seconds rank 0 has spent on it so far (submitting and blocking): the generation
    time not hidden behind training (`timing/generate`)."""

    def wait(self) -> None:
        """Block until the generation is done (without fetching it)."""
        t0 = time.perf_counter()
        self.pending.wait()
        self.waited_s += time.perf_counter() - t0


def _broadcast(obj: Any) -> Any:
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _share_out(pools: dict, scored: ScoredBatch | None, it: int) -> tuple[ScoredBatch, int]:
    """Every rank: (its share of iteration `it`'s prompt groups, the batch's sample count).

    Rank 0 cuts the batch; every other rank's share goes through the object store (the
    rollout pool's owner holds the references) and only a small header crosses the process
    group, so no other rank receives the whole batch."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world == 1:
        return scored, scored.rollout.num_samples
    key = f"ppo/{it}"
    if rank == 0:
        num_groups = len(scored.rollout.prompt_ids)
        shares = [select_groups(scored, *group_range(num_groups, r, world)) for r in range(world)]
        pools["rollout"].hand_out(key, shares)
        _broadcast(scored.rollout.num_samples)  # also: the shares are ready
        return shares[0], scored.rollout.num_samples
    total = _broadcast(None)
    return pools["rollout"].take(key, rank), total


def _launch_rollout(cfg: RLHFConfig, pools: dict, prompts: PromptSet, it: int) -> Launched:
    """Rank 0: submit iteration `it`'s prompts for generation (its prompts and seeds depend
    only on `it`, never on timing)."""
    rollout, ppo = cfg.rollout, cfg.ppo
    idx = global_batch_indices(len(prompts.ids), ppo.prompts_per_iteration, it, cfg.run.seed)
    t0 = time.perf_counter()
    pending = prompts.submit(
        pools["rollout"],
        idx.tolist(),
        n_samples=rollout.n_samples,
        max_tokens=cfg.data.max_response_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        # Row r samples with seed + r: space iterations so no two rows share a stream.
        seed=(cfg.run.seed * 100003 + it) * 2**20,
    )
    return Launched(idx.tolist(), pending, waited_s=time.perf_counter() - t0)


def _launch_ahead(cfg: RLHFConfig, pools: dict, prompts: PromptSet, it: int) -> Launched | None:
    """Rank 0, async mode: start iteration `it + 1`'s generation (None otherwise)."""
    if not cfg.ppo.async_rollouts or it + 1 >= cfg.ppo.iterations:
        return None
    return _launch_rollout(cfg, pools, prompts, it + 1)


def _collect_rollout(pools: dict, prompts: PromptSet, launched: Launched) -> RolloutBatch:
    t0 = time.perf_counter()
    batch = prompts.collect(pools["rollout"], launched.pending, launched.rows)
    launched.waited_s += time.perf_counter() - t0
    return batch


def _take_rollout(
    cfg: RLHFConfig,
    pools: dict,
    prompts: PromptSet,
    it: int,
    ahead: Launched | None,
    control_path: Path,
) -> tuple[ScoredBatch, dict[str, float]]:
    """Rank 0: iteration `it`'s scored batch, and the control and rollout metrics.

    `ahead` is the generation launched during the last learn phase (async mode), collected
    before the control file may resize the pool (a share belongs to an actor index). A
    batch more than `ppo.max_staleness` versions behind the learner (version `it`) is
    sampled again with the current weights. Without `ahead` the pool is resized first.
    """
    if ahead is None:
        metrics = apply_control(pools, control_path)
        launched = _launch_rollout(cfg, pools, prompts, it)
        chaos_in_flight(control_path, it)
        batch = _collect_rollout(pools, prompts, launched)
    else:
        launched, batch = ahead, _collect_rollout(pools, prompts, ahead)
        metrics = apply_control(pools, control_path)
        behind, bound = it - batch.policy_version, cfg.ppo.max_staleness
        if behind > bound:
            msg = "ppo: iteration %d: samples %d versions behind > ppo.max_staleness=%d; resampling"
            logger.warning(msg, it + 1, behind, bound)
            metrics["rollout/regenerated"] = 1.0
            launched = _launch_rollout(cfg, pools, prompts, it)
            batch = _collect_rollout(pools, prompts, launched)
    scored, rollout_metrics = _score_rollout(cfg, pools, prompts, launched, batch)
    rollout_metrics["rollout/staleness"] = float(it - batch.policy_version)
    return scored, metrics | rollout_metrics


def _score_rollout(
    cfg: RLHFConfig, pools: dict, prompts: PromptSet, launched: Launched, batch: RolloutBatch
) -> tuple[ScoredBatch, dict[str, float]]:
    """Rank 0: score a generated batch. Returns the scored batch + metrics."""
    t1 = time.perf_counter()
    scored: ScoredBatch = pools["reward"].score(batch)
    t2 = time.perf_counter()
    tokens = float(batch.response_mask.sum())
    metrics = {
        "timing/generate": launched.waited_s,
        "timing/score": t2 - t1,
        "rollout/policy_version": float(batch.policy_version),
        "reward/mean": float(scored.scores.mean()),
        "reward/std": float(scored.scores.std()),
        "rollout/response_length": tokens / batch.num_samples,
        "rollout/finished_rate": float(batch.finished.float().mean()),
        "rollout/tokens": tokens,
        "data/first_prompt_index": float(launched.rows[0]),
    }
    if not cfg.ppo.async_rollouts:  # async: the wait is not the engine's speed
        metrics["perf/generate_tokens_per_s"] = tokens / max(launched.waited_s, 1e-9)
    # Batch means of the scorer's per-row diagnostics (`reward/raw`, `reward/clipped`, and
    # each transform's, e.g. `reward/contrastive_baseline`).
    metrics |= {k: float(v.float().mean()) for k, v in scored.diagnostics.items()}
    metrics |= segment_batch_metrics(scored.diagnostics)
    # The pools' recoveries so far, including this iteration's generation and scoring.
    for pool in (pools["rollout"], pools["reward"]):
        metrics |= {f"faults/{kind}": float(n) for kind, n in pool.faults.items()}
    if prompts.toyworld:
        metrics |= _toy_metrics("rollout", batch.prompts, batch.responses, batch.n_samples)
    return scored, metrics


def _toy_metrics(
    prefix: str, prompts: list[str], responses: list[str], n: int, *, per_domain: bool = False
) -> dict:
    """Toy-world truth of `n` responses per prompt; `<prefix>/true_reward/<domain>` too if
    `per_domain` (evaluations: the held-out-domain experiments read them)."""
    from ray_rlhf.data.toyworld import evaluate_responses

    per_row = [p for p in prompts for _ in range(n)]
    scores = evaluate_responses(per_row, responses)
    return {f"{prefix}/{k}": v for k, v in scores.items() if per_domain or "/" not in k}


def _evaluate(cfg: RLHFConfig, pools: dict, prompts: PromptSet, learner: Any) -> dict:
    """Rank 0: held-out reward (and toy-world truth) of the current rollout weights.

    Besides the reward after transforms (`eval/<mode>/reward`), the sampled pass logs what
    the gold-vs-proxy protocol needs (Gao et al. 2022): `eval/sampled/proxy_reward`, the
    reward model's raw score before any transform, and `eval/sampled/kl_to_ref`, KL(pi ||
    pi_ref) per sequence estimated from the samples (summed k1 against the frozen reference).
    """
    out: dict[str, float] = {}
    sampled = ("sampled", cfg.rollout.n_samples, EVAL_SAMPLED_TEMPERATURE)
    for mode, n, temp in (("greedy", 1, 0.0), sampled):
        batch = prompts.generate(
            pools["rollout"],
            list(range(len(prompts.ids))),
            n_samples=n,
            max_tokens=cfg.data.max_response_tokens,
            temperature=temp,
            top_p=1.0,
            seed=cfg.run.seed,
        )
        scored = pools["reward"].score(batch)
        out[f"eval/{mode}/reward"] = float(scored.scores.mean())
        if mode == "sampled":
            out["eval/sampled/proxy_reward"] = float(scored.diagnostics["reward/raw"].mean())
            out["eval/sampled/kl_to_ref"] = float(learner.sequence_kl_to_reference(batch).mean())
        if prompts.toyworld:
            out |= _toy_metrics(f"eval/{mode}", batch.prompts, batch.responses, n, per_domain=True)
    return out


def _learner_restarts(config: dict[str, Any], start: int) -> int:
    """Rank 0 of a new worker group: how many groups of this launch started before it.

    Each start appends the launch id (new per driver run) to `worker_groups.txt` in the
    metrics dir, so a rerun of the command after a crash is a new launch, not a restart."""
    path = Path(config["metrics_dir"]) / "worker_groups.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(config["launch_id"] + "\n")
    restarts = path.read_text().split().count(config["launch_id"]) - 1
    if restarts:
        logger.warning("ppo: learner group restarted (%d) from iteration %d", restarts, start)
    return restarts


def _learn_phase(learner: Any, share: ScoredBatch, num_samples: int, it: int) -> dict:
    """Every rank: experience + PPO epochs on its share of prompt groups; the KL
    controller steps by the whole batch's `num_samples`."""
    t0 = time.perf_counter()
    exp, stats = learner.make_experience(share)
    stats |= learner.train(exp, seed=learner.cfg.run.seed * 7919 + it)
    stats["timing/train"] = time.perf_counter() - t0
    stats = mean_over_ranks(stats)
    learner.update_kl(stats["train/kl"], num_samples)
    return stats


def _save(learner: Any, it: int, metrics: dict, *, final: bool) -> None:
    weights = learner.policy_state_dict() if final else None  # collective under ZeRO-3
    state = {"iteration": it, "kl_coef": learner.kl_state()}
    meta = {"stage": "ppo", "iteration": it}
    report_checkpoint(learner, metrics, state, final_weights=weights, metadata=meta)


def _restore(learner: Any, storage: str | None) -> int:
    """The iteration to continue from (0 when starting fresh)."""
    state = restore_latest(learner, storage)
    if state is None:
        return 0
    learner.set_kl_state(float(state["kl_coef"]))
    logger.info("ppo: resumed after iteration %d", state["iteration"])
    return int(state["iteration"])


_NORM_CHUNK = 2**20
"""Elements upcast to float64 at a time by `_param_norm` (8 MiB)."""


def _param_norm(state: dict[str, torch.Tensor]) -> float:
    """sqrt of the sum of squares of every entry of `state` (each name counts, tied or not),
    accumulated in float64 without a float64 copy of any tensor: squared norms of chunks
    of `_NORM_CHUNK` elements, each in float64."""
    squares = 0.0
    for t in state.values():
        for chunk in t.detach().reshape(-1).split(_NORM_CHUNK):
            squares += float(torch.linalg.vector_norm(chunk, dtype=torch.float64)) ** 2
    return squares**0.5


def _sync(learner: Any, pools: dict, version: int, rank: int) -> dict[str, float]:
    t0 = time.perf_counter()
    state = learner.policy_state_dict()  # every rank: collective under ZeRO-3
    if rank != 0:
        return {}
    metrics = pools["rollout"].update_weights(state, version)
    return {
        **metrics,
        "timing/sync": time.perf_counter() - t0,
        "train/param_norm": _param_norm(state),
    }


def ppo_train_loop(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker."""
    from ray_rlhf.learner.ppo import PPOLearner

    cfg: RLHFConfig = config["cfg"]
    pools, prompts, eval_prompts = config["pools"], config["prompts"], config["eval_prompts"]
    rank, _ = setup_worker(cfg)
    learner = PPOLearner(config["model_dir"], cfg)
    start = _restore(learner, config.get(STORAGE_KEY))
    # Norm of the weights this iteration starts from (logged: a resume check). After a
    # restore the rollout actors must serve the restored weights, so sync them first; so
    # too after a restart before the first checkpoint (the pool's owner knows the version
    # the actors serve; every rank reads the same value).
    if start > 0 or pools["rollout"].version != 0:
        norm = _sync(learner, pools, start, rank).get("train/param_norm", 0.0)
    else:
        norm = _param_norm(learner.policy_state_dict())
    writer = MetricsWriter(config["metrics_dir"], resume_step=start) if rank == 0 else None
    restarts = _learner_restarts(config, start) if rank == 0 else 0
    if start == 0 and cfg.ppo.eval_at_start and rank == 0:
        # The starting policy (usually SFT) under the same evaluation: step 0 of the curves.
        writer.log(0, _evaluate(cfg, pools, eval_prompts, learner))
    control = Path(config["control_path"])
    ahead: Launched | None = None  # rank 0, async mode: the next iteration's generation
    for it in range(start, cfg.ppo.iterations):
        t0 = time.perf_counter()
        chaos_hooks(control, it, rank)
        if rank == 0:
            scored, metrics = _take_rollout(cfg, pools, prompts, it, ahead, control)
            ahead = _launch_ahead(cfg, pools, prompts, it)
        else:
            scored, metrics = None, {}
        metrics["train/param_norm_start"] = norm
        if restarts:
            metrics["faults/learner_restarts"] = float(restarts)
        share, num_samples = _share_out(pools, scored, it)
        metrics |= _learn_phase(learner, share, num_samples, it)
        if ahead is not None:
            # Generation still running after training is not hidden; it counts in its own
            # iteration's timing/generate (the sync would queue behind it anyway).
            ahead.wait()
        metrics |= _sync(learner, pools, it + 1, rank)
        norm = metrics.get("train/param_norm", 0.0)
        done = it + 1
        if rank == 0:
            total = time.perf_counter() - t0
            metrics |= {
                "timing/iteration": total,
                "perf/samples_per_s": scored.rollout.num_samples / total,
                "perf/tokens_per_s": metrics["rollout/tokens"] / total,
                "train/iteration": done,
            }
            if done % cfg.ppo.eval_every == 0 or done == cfg.ppo.iterations:
                metrics |= _evaluate(cfg, pools, eval_prompts, learner)
            writer.log(done, metrics)  # the driver's progress bar reads these rows
        final = done == cfg.ppo.iterations
        if final or done % cfg.ppo.checkpoint_every == 0:
            _save(learner, done, metrics, final=final)
        else:
            ray.train.report(metrics)
        if rank == 0:  # fault tests: SIGKILL the driver here, then rerun the command
            pause_if_asked(Path(config["control_path"]), "pause_ppo_after_iterations", done, "ppo")
    if writer is not None:
        writer.close()


_POSTFIX = [
    ("reward", "reward/mean", ".3f"),
    ("true", "rollout/true_reward", ".3f"),
    ("eval", "eval/sampled/reward", ".3f"),
    ("kl", "train/kl", ".3f"),
    ("| gen", "timing/generate", ".1f"),
    ("score", "timing/score", ".1f"),
    ("train", "timing/train", ".1f"),
    ("sync", "timing/sync", ".2f"),
]


def _postfix(row: Row) -> str:
    """The PPO bar's metrics: reward (toy truth, held-out eval when present), KL, and the
    phase times of the iteration in seconds."""
    return metrics_postfix(row, _POSTFIX) + (" s" if "timing/sync" in row else "")


def run_ppo_trainer(
    cfg: RLHFConfig,
    *,
    model_dir: Path,
    pools: dict[str, Any],
    prompts: PromptSet,
    eval_prompts: PromptSet,
    run_dir: Path,
) -> Path:
    """Run PPO from `model_dir`; returns the final policy dir (`run_dir/ppo_policy`)."""
    loop_config = {
        "launch_id": uuid.uuid4().hex,
        "cfg": cfg,
        "model_dir": str(Path(model_dir).resolve()),
        "pools": pools,
        "prompts": prompts,
        "eval_prompts": eval_prompts,
        "metrics_dir": str((run_dir / "ppo").resolve()),
        "control_path": str((run_dir / "control.yaml").resolve()),
    }
    progress = StageProgress("ppo", cfg.ppo.iterations, "iter", _postfix)
    result = fit_learners(
        cfg, ppo_train_loop, loop_config, run_dir=run_dir, name="ppo", progress=progress
    )
    return copy_final_policy(result, run_dir / "ppo_policy")
