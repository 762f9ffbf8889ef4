"""Content-addressed stages shared by every experiment: SFT policy, proxy reward model,
strength-annotated pairs, a per-position RM's normalizer and contrastive baselines of one
seed.

A stage's directory is named by the hash of exactly the config fields that decide its
output, under `experiment.shared_dir`. So the testbed and every method comparison that
use the same SFT settings and seed train that SFT policy once, an arm whose RM settings
equal the vanilla arm's reuses the vanilla RM, and a stopped experiment resumes at the
first stage without a `DONE.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ray_rlhf.config import RLHFConfig, dump_config
from ray_rlhf.typed_config import to_dict

log = logging.getLogger(__name__)

_SFT_TOY_FIELDS = ("seed", "domains", "min_len", "max_len", "style_token", "n_sft")
_PPO_TOY_FIELDS = ("ppo_prompts",)
"""Toy-world fields that only choose PPO's prompts (no stage depends on them)."""
_NORMALIZER_FIELDS = ("min_std", "normalizer_samples", "normalizer_source", "huber_epsilon")
"""`segment` fields of the location-aware normalizer, fitted after a per-position RM is
trained: they do not change its training (`Stages.normalized_reward_model`)."""


def stage_key(parts: dict[str, Any]) -> str:
    """12 hex digits of the sha256 of `parts` as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def sft_parts(cfg: RLHFConfig) -> dict[str, Any]:
    """The fields that decide the SFT policy: model, SFT, learners, the toy SFT split."""
    toy = to_dict(cfg.data.toyworld)
    toy = {k: v for k, v in toy.items() if k in _SFT_TOY_FIELDS or k.startswith("sft_")}
    data = {"max_prompt_tokens": cfg.data.max_prompt_tokens,
            "max_response_tokens": cfg.data.max_response_tokens, "toyworld": toy}
    learner = to_dict(cfg.learner)
    # Off (the default), activation recomputation leaves the run as it was: leave it out,
    # so the SFT and RM stages trained before the option existed keep their keys.
    if not learner["gradient_checkpointing"]:
        del learner["gradient_checkpointing"]
    return {"model": to_dict(cfg.model), "sft": to_dict(cfg.sft),
            "learner": learner, "data": data, "run_seed": cfg.run.seed}


def rm_parts(cfg: RLHFConfig) -> dict[str, Any]:
    """The fields that decide the proxy RM: its SFT start, the pairs it trains on (not the
    shifted test split's), the RM section (and the segmentation, which a per-position RM
    trains on)."""
    toy = {k: v for k, v in to_dict(cfg.data.toyworld).items()
           if not k.startswith("shifted_") and k not in _PPO_TOY_FIELDS}
    rm = to_dict(cfg.rm)
    # Sections of RM methods that are off (and `init_path` unset: a fresh head on the SFT
    # policy) do not change the RM: leave them out, so adding such an option (with a default
    # of off) keeps the keys of the RMs trained before it.
    for name, off in (("contrastive", lambda c: c["kind"] == "none"),
                      ("meta", lambda c: not c["enabled"]),
                      ("init_path", lambda path: path is None)):
        if name in rm and off(rm[name]):
            del rm[name]
    parts = {"sft": sft_parts(cfg), "toyworld": toy,
             "preferences_path": cfg.data.preferences_path, "rm": rm}
    if cfg.data.eval_preferences_path is not None:  # (keeps the keys of RMs made before it)
        parts["eval_preferences_path"] = cfg.data.eval_preferences_path
    if cfg.rm.head == "per_position":  # the segmentation it trains on, not the normalizer
        parts["segment"] = {k: v for k, v in to_dict(cfg.segment).items()
                            if k not in _NORMALIZER_FIELDS}
    return parts


def _default_normalizer(segment: Any) -> Any:
    """`segment` with the normalizer fields at their defaults (fitted on the pairs)."""
    defaults = type(segment)()
    return dataclasses.replace(
        segment, **{name: getattr(defaults, name) for name in _NORMALIZER_FIELDS}
    )


class Stages:
    """Runs or reuses the shared stages of one seed. Ray must be initialized."""

    def __init__(self, shared_dir: Path) -> None:
        self.shared_dir = shared_dir

    def _dir(self, kind: str, parts: dict[str, Any]) -> Path:
        out = self.shared_dir / kind / stage_key(parts)
        out.mkdir(parents=True, exist_ok=True)
        (out / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
        return out

    def sft_policy(self, cfg: RLHFConfig) -> Path:
        """The SFT policy of `cfg` (trained from a fresh tiny model on the toy SFT split)."""
        from ray_rlhf.loops import sft
        from ray_rlhf.loops.common import mark_done

        out = self._dir("sft", sft_parts(cfg))
        if not (out / "DONE.json").exists():
            log.info("stage sft -> %s", out)
            dump_config(cfg, out / "config.yaml")
            result = sft.run(cfg, out)
            mark_done(out, {"policy_dir": str(result.policy_dir), "seconds": result.seconds})
        return out / "policy"

    def strength_pairs(self, cfg: RLHFConfig, policy: Path) -> Path:
        """The toy preference pairs annotated with the ensemble's strength (M reward models
        trained from `policy`; Secrets of RLHF II section 3a)."""
        from ray_rlhf.loops import strength
        from ray_rlhf.loops.common import mark_done

        plain = dataclasses.replace(cfg, rm=dataclasses.replace(cfg.rm, loss="plain"))
        out = self._dir("strength", rm_parts(plain))
        if not (out / "DONE.json").exists():
            log.info("stage strength -> %s", out)
            dump_config(plain, out / "config.yaml")
            summary = strength.annotate(plain, out, policy)
            mark_done(out, {"path": summary["output"], **summary})
        return Path(json.loads((out / "DONE.json").read_text())["path"])

    def reward_model(self, cfg: RLHFConfig, policy: Path) -> Path:
        """The proxy RM of `cfg`, initialized from `policy` (the SFT policy)."""
        from ray_rlhf.loops import rm
        from ray_rlhf.loops.common import mark_done

        if cfg.rm.uses_strength and cfg.data.preferences_path is None:
            # The annotated toy train pairs; held out: the toy world's test pairs, as for
            # the plain RM (so every arm trains on the same pairs).
            pairs = self.strength_pairs(cfg, policy)
            test = pairs.parent / "toyworld" / "pref_test.jsonl"
            data = dataclasses.replace(
                cfg.data, preferences_path=str(pairs), eval_preferences_path=str(test)
            )
            cfg = dataclasses.replace(cfg, data=data)
        arm = cfg
        if cfg.rm.head == "per_position":  # trained with the default normalizer, see below
            cfg = dataclasses.replace(cfg, segment=_default_normalizer(cfg.segment))
        out = self._dir("rm", rm_parts(cfg))
        if not (out / "DONE.json").exists():
            log.info("stage rm -> %s", out)
            dump_config(cfg, out / "config.yaml")
            result = rm.run(cfg, out, policy)
            mark_done(out, {"eval_accuracy": result.eval_accuracy, "seconds": result.seconds})
        if arm.segment != cfg.segment:
            return self.normalized_reward_model(arm, policy, out / "reward_model")
        return out / "reward_model"

    def normalized_reward_model(self, cfg: RLHFConfig, policy: Path, trained: Path) -> Path:
        """A copy of the per-position RM `trained` with the normalizer of `cfg.segment`
        refitted (`ray-rlhf fit-segment-normalizer`'s steps), e.g. on SFT-policy samples:
        arms that differ only in the normalizer share the trained RM."""
        import shutil

        from ray_rlhf.loops import segment_normalizer
        from ray_rlhf.loops.common import mark_done

        parts = {"rm": str(trained), "segment": to_dict(cfg.segment), "run_seed": cfg.run.seed}
        out = self._dir("normalized_rm", parts)
        if not (out / "DONE.json").exists():
            log.info("stage normalized_rm -> %s", out)
            dump_config(cfg, out / "config.yaml")
            target = out / "reward_model"
            shutil.rmtree(target, ignore_errors=True)  # a copy a stop left half-done
            shutil.copytree(trained, target)
            record = segment_normalizer.refit(cfg, target, policy, out)
            mark_done(out, {"trained": str(trained), "segment": record})
        return out / "reward_model"

    def meta_reward_model(self, cfg: RLHFConfig, policy: Path, init: Path) -> Path:
        """The meta-learned RM (`ray-rlhf meta-rm`) of `cfg`: phi starts from the proxy RM
        `init`, pi_ref is the SFT `policy`, the domains are the toy world's training
        domains (their preference pairs)."""
        from ray_rlhf.loops import meta_rm
        from ray_rlhf.loops.common import mark_done

        meta = dataclasses.replace(cfg.meta, rm_init_path=str(init))
        parts = {"rm": rm_parts(cfg), "meta": to_dict(meta), "run_seed": cfg.run.seed}
        out = self._dir("meta_rm", parts)
        if not (out / "DONE.json").exists():
            log.info("stage meta_rm -> %s", out)
            cfg = dataclasses.replace(cfg, meta=meta)
            dump_config(cfg, out / "config.yaml")
            result = meta_rm.run(cfg, out, policy)
            mark_done(out, {"eval_accuracy": result.eval_accuracy, "seconds": result.seconds,
                            "seconds_per_outer_step": result.seconds_per_step})
        return out / "reward_model"

    def baselines(self, cfg: RLHFConfig, policy: Path, reward_model: Path) -> Path:
        """Offline contrastive baselines: k SFT samples per prompt scored by the RM."""
        from ray_rlhf.loops import baselines
        from ray_rlhf.loops.common import mark_done

        parts = {"rm": str(reward_model), "policy": str(policy),
                 "contrastive": to_dict(cfg.contrastive), "toyworld": to_dict(cfg.data.toyworld),
                 "rollout": to_dict(cfg.rollout), "run_seed": cfg.run.seed}
        parts["contrastive"].pop("enabled")
        parts["contrastive"].pop("baselines_path")
        out = self._dir("baselines", parts)
        if not (out / "DONE.json").exists():
            log.info("stage baselines -> %s", out)
            dump_config(cfg, out / "config.yaml")
            result = baselines.run(cfg, out, policy)
            mark_done(out, {"path": str(result.path)})
        return Path(json.loads((out / "DONE.json").read_text())["path"])
