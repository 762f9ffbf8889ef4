"""Smoke test of the benchmark runner at the smallest size: it runs and writes a report.

ray_rlhf's real PPO pipeline (Ray, vLLM rollout actor, reward actor, DeepSpeed learner under
Ray Train) and the compute floor, one repetition each, TRL off (the real report runs TRL in
its own venv; see benchmarks/trl_env.py). No timing assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_runner_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [
        sys.executable, "-m", "benchmarks.run", "--smoke", "--size", "tiny", "--reps", "1",
        "--warmup", "0", "--rounds", "1", "--algos", "rloo", "--parts", "floor",
        "--trl", "off", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = (out / "report.md").read_text()
    assert "## 1. Against TRL, same work" in report
    assert "TRL: not run" in report
    assert "## 2. Against the compute floor" in report
    assert (out / "vs_trl.png").stat().st_size > 0
    assert (out / "phases.png").stat().st_size > 0

    tiny = json.loads((out / "results.json").read_text())["sizes"]["tiny"]
    ray = tiny["algos"]["rloo"]["ray"]
    assert ray["tokens"] == 4 * 2 * 8  # exactly prompts x n x tokens: EOS is ignored
    assert ray["iteration"] > 0 and tiny["algos"]["rloo"]["floor"]["floor"] > 0
