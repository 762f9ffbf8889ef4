"""`ray-rlhf demo` as a person sees it: a short console (header, one bar per stage, the
result table, where things are) while Ray, vLLM, DeepSpeed and transformers logs land in
runs/<name>/logs/. A subprocess with tiny sizes (about 1-2 minutes on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_TINY = [
    "sft.steps=30",
    "sft.log_every=10",
    "sft.batch_size=16",
    "sft.warmup_steps=5",
    "ppo.iterations=2",
    "ppo.prompts_per_iteration=16",
    "ppo.minibatch_size=32",
    "ppo.eval_every=2",
    "data.toyworld.n_sft=500",
    "data.toyworld.n_train_prompts=200",
    "data.toyworld.n_test_prompts=16",
    "rollout.kv_cache_mib=16",
]
_INFRASTRUCTURE = (  # what Ray, vLLM, DeepSpeed and transformers print
    "RayTrainWorker",
    "PlacementGroupCleaner",
    "TrainController",
    "TrainingReport",
    "INFO",
    "WARNING",
    "Loading weights",
    "Writing model shards",
)


def test_demo_console_is_short_and_the_infrastructure_logs_are_in_the_run_dir(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "ray_rlhf.cli", "demo", f"run.output_dir={tmp_path}", *_TINY],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.split("\n")  # a bar redraws its line with \r: one line per stage
    print(proc.stdout)
    assert len(lines) <= 60, proc.stdout
    assert proc.stderr == "", proc.stderr
    for word in _INFRASTRUCTURE:
        assert word not in proc.stdout, word
    for stage in ("sft", "ppo", "eval"):
        assert any(line.lstrip("\r").startswith(f"{stage}:") and "100%" in line for line in lines)
    table = proc.stdout[proc.stdout.index("# ray_rlhf demo") :]
    assert "| ppo |" in table and "Median seconds per PPO iteration" in table
    assert f"Written to {tmp_path / 'demo'}/" in "\n".join(table.rstrip().splitlines()[-3:])

    logs = tmp_path / "demo" / "logs"
    driver = (logs / "driver.log").read_text()
    assert "token limits: prompt 32" in driver  # the header, with the rest of the record
    # Unset, the micro-batch of a tiny model is a learner's whole minibatch share (32 / 2).
    assert "micro-batch: ppo.micro_batch_size 16 rows per forward (unset: about" in driver
    assert "vllm" in driver.lower()  # the evaluation engine runs in the driver
    workers = "".join(p.read_text(errors="replace") for p in (logs / "ray").glob("worker-*"))
    assert "Reporting training result" in workers  # Ray Train's per-step reports
