"""Run one experiment: `python -m experiments.run <name> [--config FILE] [section.key=value ...]`.

Also a `ray job submit` entrypoint (`-- python -m experiments.run <name> ...`). The settings
come from `experiments/configs/<name>.yaml` unless `--config` names another file; the
experiment's module `experiments/<name>.py` documents what it measures. Finished
(arm, seed) runs are kept, so rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from experiments.protocol import load_experiment, run_experiment

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="experiment name (a file in experiments/configs/)")
    parser.add_argument("--config", help="YAML file (default: experiments/configs/<name>.yaml)")
    parser.add_argument("--arms", help="comma-separated subset of the config's arms")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    exp = load_experiment(args.name, args.config or CONFIGS / f"{args.name}.yaml", args.overrides)
    if args.arms:
        wanted = args.arms.split(",")
        unknown = sorted(set(wanted) - set(exp.arms))
        if unknown:
            parser.error(f"--arms: unknown {unknown}; the config has {sorted(exp.arms)}")
        exp = dataclasses.replace(exp, arms={a: exp.arms[a] for a in wanted})
    data = run_experiment(exp)
    print((exp.run_dir / "report.md").read_text(), flush=True)
    return 0 if data["arms"] else 1


if __name__ == "__main__":
    sys.exit(main())
