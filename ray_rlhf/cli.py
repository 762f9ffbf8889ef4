"""`ray-rlhf <command> [--config FILE] [--verbose] [section.key=value ...]`.

The console shows a header, one progress bar per stage and the results; Ray, vLLM,
DeepSpeed and transformers logs go to `runs/<name>/logs/` (`--verbose` keeps them on the
console too; `ray_rlhf.logs`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from ray_rlhf.config import RLHFConfig, load_config, to_dict
from ray_rlhf.errors import UserError
from ray_rlhf.logs import captures_output, console_session, report_failure, report_user_error


@dataclass(frozen=True)
class _Command:
    """A subcommand: help text, the `ray_rlhf.loops` module that runs it, its defaults."""

    help: str
    loop: str | None
    """`ray_rlhf.loops.<loop>.run_job(cfg)` runs the command (None: handled here)."""
    defaults: tuple[str, ...] = ()
    """`section.key=value` applied under the config file and the overrides."""


_COMMANDS = {
    "demo": _Command(
        "the toy world end to end: SFT, PPO, evaluation",
        "demo",
        ("run.name=demo", "run.overwrite=true"),
    ),
    "sft": _Command(
        "supervised fine-tuning as a Ray Train + DeepSpeed run", "sft", ("run.name=sft",)
    ),
    "train-rm": _Command(
        "Bradley-Terry reward-model training as a Ray Train + DeepSpeed run", "rm", ("run.name=rm",)
    ),
    "ppo": _Command(
        "PPO: vLLM rollout actors, reward actors, DeepSpeed learners under Ray Train",
        "ppo",
        ("run.name=ppo",),
    ),
    "sample-baselines": _Command(
        "offline baseline rewards of the SFT policy for contrastive rewards",
        "baselines",
        ("run.name=baselines",),
    ),
    "fit-segment-normalizer": _Command(
        "refit a segment RM's location-aware normalizer (mu(p), sigma(p))",
        "segment_normalizer",
        ("run.name=segment_normalizer",),
    ),
    "preference-strength": _Command(
        "train an RM ensemble; annotate pairs with strength mu and spread",
        "strength",
        ("run.name=strength",),
    ),
    "meta-rm": _Command(
        "meta-learn a reward model over the training domains (OOD preference learning)",
        "meta_rm",
        ("run.name=meta_rm",),
    ),
    "iterate": _Command(
        "iterative RLHF: R rounds of policy samples -> reward-model update -> PPO",
        "iterate",
        ("run.name=iterate", "iterate={}"),
    ),
    "analyze-rm": _Command(
        "how much of a reward model's decisions on a dataset are prompt-free",
        "analyze_rm",
        ("run.name=analyze_rm",),
    ),
    "config": _Command("print the resolved config as YAML", None),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-rlhf",
        description="A Ray-native RLHF trainer.",
        epilog="Overrides are dotted keys, e.g. sft.steps=200 learner.zero_stage=3.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in _COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        p.add_argument("--config", help="YAML config file (sections of RLHFConfig)")
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="also show Ray, vLLM, DeepSpeed and transformers logs on the console "
            "(they always go to runs/<name>/logs/)",
        )
        p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--config` and `--verbose` may come between the overrides.

    Usage errors (an unknown command or flag) exit with argparse's message and code 2.
    """
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    flags = [arg for arg in rest if arg.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    args.overrides += rest
    return args


def parse_config(argv: list[str] | None = None) -> tuple[str, RLHFConfig]:
    """Parse the command line into (command, validated config)."""
    args = parse_args(argv)
    return args.command, _config(args)


def _config(args: argparse.Namespace) -> RLHFConfig:
    defaults = _COMMANDS[args.command].defaults
    return load_config(args.config, args.overrides, defaults=defaults)


def main(argv: list[str] | None = None) -> int:
    """Console entry point.

    A `UserError` (bad config, data, model dir, reward rule or run dir) ends the command
    with one paragraph on stderr, its traceback in the run's `logs/driver.log`, and exit
    code 2 (`ray_rlhf.logs.report_user_error`). While the driver's output goes to that log
    (no `--verbose`), any other error is reported the same way with exit code 1.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prog = f"ray-rlhf {args.command}"
    with console_session(verbose=args.verbose):
        try:
            cfg = _config(args)
            if args.command == "config":
                import yaml

                print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
                return 0
            loop = importlib.import_module(f"ray_rlhf.loops.{_COMMANDS[args.command].loop}")
            loop.run_job(cfg)  # imported here: `ray-rlhf config` and --help stay fast
        except UserError as error:
            return report_user_error(error, prog)
        except (Exception, KeyboardInterrupt) as error:
            if not captures_output():
                raise
            return report_failure(error, prog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
