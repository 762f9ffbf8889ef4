"""`ray-rlhf <command> [--config FILE] [section.key=value ...]`."""

from __future__ import annotations

import argparse
import sys

from ray_rlhf.config import ConfigError, RLHFConfig, load_config, to_dict

_COMMANDS = {
    "demo": "the toy world end to end (SFT + evaluation today)",
    "sft": "supervised fine-tuning as a Ray Train + DeepSpeed run",
    "train-rm": "Bradley-Terry reward-model training as a Ray Train + DeepSpeed run",
    "ppo": "PPO: vLLM rollout actors, reward actors, DeepSpeed learners under Ray Train",
    "sample-baselines": "offline baseline rewards of the SFT policy for contrastive rewards",
    "fit-segment-normalizer": "refit a segment RM's location-aware normalizer (mu(p), sigma(p))",
    "preference-strength": "train an RM ensemble; annotate pairs with strength mu and spread",
    "analyze-rm": "how much of a reward model's decisions on a dataset are prompt-free",
    "config": "print the resolved config as YAML",
}

# Each command's own defaults, applied under the config file and the overrides.
_DEFAULTS = {
    "demo": ("run.name=demo", "run.overwrite=true"),
    "sft": ("run.name=sft",),
    "train-rm": ("run.name=rm",),
    "ppo": ("run.name=ppo",),
    "preference-strength": ("run.name=strength",),
    "analyze-rm": ("run.name=analyze_rm",),
    "fit-segment-normalizer": ("run.name=segment_normalizer",),
    "sample-baselines": ("run.name=baselines",),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-rlhf",
        description="A Ray-native RLHF trainer.",
        epilog="Overrides are dotted keys, e.g. sft.steps=200 learner.zero_stage=3.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config file (sections of RLHFConfig)")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[str, RLHFConfig]:
    """Parse the command line into (command, validated config)."""
    args = _parser().parse_args(argv)
    defaults = _DEFAULTS.get(args.command, ())
    return args.command, load_config(args.config, args.overrides, defaults=defaults)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    try:
        command, cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"ray-rlhf: config error: {exc}", file=sys.stderr)
        return 2
    if command == "config":
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if command == "demo":
        from ray_rlhf.loops import demo

        demo.run(cfg)
        return 0
    if command == "train-rm":
        from ray_rlhf.loops import rm

        rm.run_job(cfg)
        return 0
    if command == "ppo":
        from ray_rlhf.loops import ppo

        ppo.run_job(cfg)
        return 0
    if command == "sample-baselines":
        from ray_rlhf.loops import baselines

        baselines.run_job(cfg)
        return 0
    if command == "fit-segment-normalizer":
        from ray_rlhf.loops import segment_normalizer

        segment_normalizer.run_job(cfg)
        return 0
    if command == "preference-strength":
        from ray_rlhf.loops import strength

        strength.run_job(cfg)
        return 0
    if command == "analyze-rm":
        from ray_rlhf.loops import analyze_rm

        analyze_rm.run_job(cfg)
        return 0
    from ray_rlhf.loops import sft

    sft.run_job(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
