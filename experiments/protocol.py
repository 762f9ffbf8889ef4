"""One seeds x arms runner for reward-method experiments under the gold-vs-proxy protocol.

An experiment is one YAML file (`experiments/configs/<name>.yaml`):

    experiment:        ExperimentConfig (seeds, KL budgets, where shared stages live)
    arms:              arm name -> dotted overrides on top of the shared sections (and
                       optionally `experiment.reward_model: rm | meta_rm | rm_continued`)
    run: / model: / data: / sft: / rm: / ppo: / ...   the usual RLHFConfig sections

For every seed (which sets `run.seed`, the tiny model's init and the toy world's seed) and
every arm, the runner builds the arm's config, gets the shared stages it needs (SFT policy,
the proxy RM its `rm` / `data.toyworld` settings describe, contrastive baselines when
`contrastive.enabled`; see `stages.py`), and runs PPO from the SFT policy under that RM
with an evaluation before the first update (`ppo.eval_at_start`). Each (arm, seed) run dir
gets `DONE.json` when it finishes, so a rerun resumes with the first unfinished pair.
The proxy RM of every arm is also scored against the truth on held-out pairs
(`rm_accuracy`). The report (`report.py`) is written from the finished runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_rlhf.config import RLHFConfig, dump_config
from ray_rlhf.loops.common import IN_RAY_JOB
from ray_rlhf.typed_config import ConfigError, build, check, merge, parse_override, set_dotted

log = logging.getLogger(__name__)

BASELINES_FROM_STAGE = "<the baselines stage of this seed>"
ARM_REWARD_KEY = "experiment.reward_model"
"""The one arm key that is not a config override: which stage makes the arm's RM."""
REWARD_STAGES = ("rm", "meta_rm", "rm_continued")


@dataclass(frozen=True)
class ExperimentConfig:
    """What an experiment repeats and how it is summarized (section `experiment`)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; each sets run.seed, model.tiny.seed and data.toyworld.seed."""
    kl_budgets: tuple[float, ...] = (1.0, 2.0, 4.0)
    """KL(pi || pi_SFT) per sequence (nats) at which the true reward is interpolated."""
    shared_dir: str = "runs/experiments/shared"
    """Where content-addressed stages (SFT policies, RMs, baselines) are kept and reused."""
    title: str = ""
    """Heading of the report."""
    report_metrics: tuple[str, ...] = ()
    """Training metrics (metrics.jsonl keys) averaged over each run's iterations and
    reported per arm, e.g. `train/adv_var_within_prompt`."""
    testbed: str | None = None
    """Name of a config in experiments/configs/ whose sections (not its experiment / arms)
    lie under this file's: method comparisons share the calibrated testbed this way."""

    def __post_init__(self) -> None:
        check(len(self.seeds) > 0, "seeds", "give at least one seed")
        check(all(b > 0 for b in self.kl_budgets), "kl_budgets", "must be > 0")


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment: its settings, shared config, arms and the config file's hash."""

    name: str
    settings: ExperimentConfig
    base: RLHFConfig
    arms: dict[str, list[str]]
    config_sha256: str
    """sha256 of the YAML file's bytes (the committed settings)."""
    overrides: tuple[str, ...] = ()
    """Command-line overrides on top of the file (reported; empty for evidence runs)."""
    testbed_sha256: str | None = None
    """sha256 of the testbed config this experiment builds on (`experiment.testbed`)."""
    arm_reward_models: dict[str, str] = dataclasses.field(default_factory=dict)
    """Arm -> the stage that makes its reward model (`experiment.reward_model` in the arm):
    `rm` (the proxy RM, the default), `meta_rm` (meta-learned from the proxy RM) or
    `rm_continued` (the proxy RM trained on by the arm's `rm` settings, e.g. `rm.steps`
    more BT steps: a baseline with a method's extra budget)."""
    config_file: str = ""
    """The YAML file the settings came from, as given (the report names it)."""

    @property
    def run_dir(self) -> Path:
        return self.base.run.run_dir


def load_experiment(name: str, path: str | Path, overrides: list[str]) -> Experiment:
    """Read an experiment YAML (+ `section.key=value` overrides) and validate every arm.

    Raises:
        ConfigError: Naming the file, arm or dotted key that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config {path}: not found")
    text = path.read_text()
    tree = yaml.safe_load(text) or {}
    for item in overrides:
        set_dotted(tree, *parse_override(item))
    settings = build(ExperimentConfig, tree.pop("experiment", {}) or {}, "experiment")
    raw_arms = tree.pop("arms", None)
    testbed_sha = None
    if settings.testbed is not None:
        testbed_file = path.parent / f"{settings.testbed}.yaml"
        check(testbed_file.is_file(), "experiment.testbed", f"{testbed_file} not found")
        under = yaml.safe_load(testbed_file.read_text()) or {}
        under.pop("experiment", None), under.pop("arms", None)
        under.get("run", {}).pop("name", None)
        tree = merge(under, tree)
        testbed_sha = hashlib.sha256(testbed_file.read_bytes()).hexdigest()
    check(isinstance(raw_arms, dict) and raw_arms, "arms", "give a mapping arm -> overrides")
    tree.setdefault("run", {}).setdefault("name", name)
    tree["run"].setdefault("output_dir", "runs/experiments")
    base = build(RLHFConfig, merge({}, tree), "")
    if IN_RAY_JOB in os.environ:
        for key, value in (("run.output_dir", base.run.output_dir),
                           ("experiment.shared_dir", settings.shared_dir)):
            check(Path(value).is_absolute(), key, f"{value!r} is relative, but this is a Ray "
                  "job whose working dir is a temporary copy; give an absolute path")
    for key in ("max_prompt_tokens", "max_response_tokens"):
        check(getattr(base.data, key) is not None, f"data.{key}",
              "experiments fix the token limits in their config (they key the shared stages)")
    arms, reward_models = {}, {}
    for arm, changes in raw_arms.items():
        check(isinstance(changes, dict | None), f"arms.{arm}", "must be a mapping of overrides")
        changes = dict(changes or {})
        reward_models[str(arm)] = changes.pop(ARM_REWARD_KEY, "rm")
        check(reward_models[str(arm)] in REWARD_STAGES, f"arms.{arm}.{ARM_REWARD_KEY}",
              f"must be one of {list(REWARD_STAGES)}")
        arms[str(arm)] = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
        try:
            arm_config(base, arms[str(arm)], settings.seeds[0])
        except ConfigError as exc:
            raise ConfigError(f"arms.{arm}: {exc}") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Experiment(name, settings, base, arms, sha, tuple(overrides), testbed_sha,
                      reward_models, _shown_path(path))


def _shown_path(path: Path) -> str:
    """`path` relative to the repo when it is inside it (reports are read on other clones)."""
    root = Path(__file__).resolve().parents[1]
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def arm_config(base: RLHFConfig, overrides: list[str], seed: int) -> RLHFConfig:
    """The full config of one (arm, seed): the arm's overrides, then the seed everywhere."""
    from ray_rlhf.typed_config import to_dict

    tree = to_dict(base)
    for item in overrides:
        set_dotted(tree, *parse_override(item))
    tree["run"]["seed"] = seed
    tree["model"]["tiny"]["seed"] = seed
    tree["data"]["toyworld"]["seed"] = seed
    tree["ppo"]["eval_at_start"] = True
    contrastive = tree["contrastive"]
    if contrastive["enabled"] and contrastive["baselines_path"] is None:
        contrastive["baselines_path"] = BASELINES_FROM_STAGE  # `run_pair` fills it in
    return build(RLHFConfig, tree, "")


def rm_accuracy(reward_model: Path, cfg: RLHFConfig) -> dict[str, float]:
    """Accuracy of the RM against the toy world's truth on held-out pairs, ties skipped.

    Returns:
        `rm_acc_all` and `rm_acc_same_style` (pairs whose two responses agree on the style
        token) on pref_test (in distribution), and `rm_acc_shifted` on pref_shifted.
    """
    import torch

    from experiments.summary import truth_accuracies
    from ray_rlhf.data.toyworld import build_splits
    from ray_rlhf.reward.scorer import ModelSource

    source = ModelSource(str(reward_model), policy_dir=None, trust_remote_code=False,
                         threads=torch.get_num_threads())
    splits = build_splits(cfg.data.toyworld)
    out = {}
    for name, ds in (("test", splits.pref_test), ("shifted", splits.pref_shifted)):
        done = [True] * ds.num_rows
        margin = (source.score_texts(ds["prompt"], ds["chosen"], done)
                  - source.score_texts(ds["prompt"], ds["rejected"], done))
        truth = [c - r for c, r in zip(ds["chosen_true_reward"], ds["rejected_true_reward"],
                                       strict=True)]
        same = [c == r for c, r in zip(ds["chosen_style"], ds["rejected_style"], strict=True)]
        acc = truth_accuracies(margin.tolist(), truth, same)
        if name == "test":
            out |= {"rm_acc_all": acc["all"], "rm_acc_same_style": acc["same_style"]}
        else:
            out["rm_acc_shifted"] = acc["all"]
    return out


def _arm_reward_model(
    exp: Experiment, stages: Any, arm: str, seed: int, cfg: RLHFConfig, policy: Path
) -> Path:
    """The reward model an (arm, seed) runs PPO under (`Experiment.arm_reward_models`)."""
    kind = exp.arm_reward_models.get(arm, "rm")
    if kind == "rm_continued":  # the shared proxy RM, then the arm's rm settings from it
        proxy = stages.reward_model(arm_config(exp.base, [], seed), policy)
        rm = dataclasses.replace(cfg.rm, init_path=str(proxy))
        return stages.reward_model(dataclasses.replace(cfg, rm=rm), policy)
    reward_model = stages.reward_model(cfg, policy)
    if kind == "meta_rm":
        reward_model = stages.meta_reward_model(cfg, policy, init=reward_model)
    return reward_model


def run_pair(exp: Experiment, stages: Any, arm: str, seed: int) -> Path:
    """PPO of one (arm, seed) with its stages; returns the run dir (skipped when done)."""
    from experiments.stages import stage_key
    from ray_rlhf.loops import ppo
    from ray_rlhf.loops.common import mark_done
    from ray_rlhf.typed_config import to_dict

    out = exp.run_dir / f"seed{seed}" / arm
    if (out / "DONE.json").exists():
        return out
    start = time.perf_counter()
    cfg = arm_config(exp.base, exp.arms[arm], seed)
    policy = stages.sft_policy(cfg)
    reward_model = _arm_reward_model(exp, stages, arm, seed, cfg, policy)
    shifted = {k: v for k, v in to_dict(cfg.data.toyworld).items() if k.startswith("shifted_")}
    accuracy_file = reward_model.parent / f"truth_accuracy_{stage_key(shifted)}.json"
    if not accuracy_file.exists():
        accuracy_file.write_text(json.dumps(rm_accuracy(reward_model, cfg)))
    reward = {"kind": "model", "model_path": str(reward_model)}
    cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, **reward))
    if cfg.contrastive.enabled:
        path = stages.baselines(cfg, policy, reward_model)
        contrastive = dataclasses.replace(cfg.contrastive, baselines_path=str(path))
        cfg = dataclasses.replace(cfg, contrastive=contrastive)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    log.info("arm %s seed %d: PPO -> %s", arm, seed, out)
    result = ppo.run(cfg, out, policy)
    mark_done(out, {"ppo_seconds": result.seconds, "seconds": time.perf_counter() - start,
                    "reward_model": str(reward_model),
                    "policy": str(policy), **json.loads(accuracy_file.read_text())})
    return out


def run_pending(exp: Experiment, run_one: Callable[[Experiment, Any, str, int], Path]) -> None:
    """`run_one(exp, stages, arm, seed)` for every (arm, seed) whose run dir has no
    `DONE.json` yet, seed by seed, on one Ray session."""
    from experiments.stages import Stages
    from ray_rlhf.config import requested_cpus
    from ray_rlhf.distributed.runtime import init_ray, shutdown_ray

    exp.run_dir.mkdir(parents=True, exist_ok=True)
    (exp.run_dir / "config_sha256.txt").write_text(exp.config_sha256 + "\n")
    stages = Stages(Path(exp.settings.shared_dir))
    pending = [(a, s) for s in exp.settings.seeds for a in exp.arms
               if not (exp.run_dir / f"seed{s}" / a / "DONE.json").exists()]
    if not pending:
        return
    started = init_ray(exp.base.resources, min_cpus=requested_cpus(exp.base))
    try:
        for i, (arm, seed) in enumerate(pending, 1):
            t0 = time.perf_counter()
            run_one(exp, stages, arm, seed)
            log.info("[%d/%d] %s seed %d done in %.0f s", i, len(pending), arm, seed,
                     time.perf_counter() - t0)
    finally:
        shutdown_ray(started)


def run_experiment(exp: Experiment) -> dict[str, Any]:
    """Every (arm, seed) not yet done, then the report; returns the report's numbers."""
    from experiments.report import write_report

    start = time.perf_counter()
    run_pending(exp, run_pair)
    return write_report(exp, time.perf_counter() - start)
