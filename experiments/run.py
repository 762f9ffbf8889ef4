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
import shutil
import sys
from pathlib import Path

from experiments.protocol import load_experiment, run_experiment

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="experiment name (a file in experiments/configs/)")
    parser.add_argument("--config", help="YAML file (default: experiments/configs/<name>.yaml)")
    parser.add_argument("--arms", help="comma-separated subset of the config's arms")
    parser.add_argument(
        "--publish", metavar="DIR",
        help="also copy the report, JSON and plot to DIR as <name>.md / .json / .png "
        "(with DIR/<name>_notes.md appended to the report when it exists)",
    )
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
    if args.publish:
        publish(exp.name, exp.run_dir, Path(args.publish))
    return 0 if data["arms"] else 1


def publish(name: str, run_dir: Path, out: Path, plot: str = "gold_vs_kl.png") -> None:
    """Copy an experiment's report (image link renamed), JSON and plot (`plot` in the run
    dir) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report = (run_dir / "report.md").read_text().replace(f"({plot})", f"({name}.png)")
    notes = out / f"{name}_notes.md"
    if notes.exists():
        report += "\n" + notes.read_text()
    (out / f"{name}.md").write_text(report)
    shutil.copyfile(run_dir / f"{name}.json", out / f"{name}.json")
    shutil.copyfile(run_dir / plot, out / f"{name}.png")


if __name__ == "__main__":
    sys.exit(main())
