"""The console people read: progress bars fed by rank 0's metrics rows, the driver's output
redirected into runs/<name>/logs/ (unless --verbose), errors named on the console."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ray_rlhf import cli, logs, progress
from ray_rlhf.progress import MetricsTail, StageBar, StageProgress, follow_metrics, metrics_postfix

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_leftover_handlers():
    """`attach_driver_log` adds a file handler to the `ray_rlhf` logger; drop it after."""
    yield
    logger = logging.getLogger("ray_rlhf")
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
        handler.close()


def _append(path: Path, *rows: dict, partial: str = "") -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows) + partial)


def test_metrics_tail_reads_new_complete_rows_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _append(path, {"step": 1})  # an earlier session's row
    tail = MetricsTail(path)
    assert tail.new_rows() == []
    _append(path, {"step": 2}, partial='{"step": ')
    assert tail.new_rows() == [{"step": 2}]
    _append(path, partial='3}\n')
    assert tail.new_rows() == [{"step": 3}]
    assert MetricsTail(tmp_path / "missing.jsonl").new_rows() == []


def test_postfix_shows_the_fields_a_row_has():
    fields = [("reward", "reward/mean", ".2f"), ("true", "rollout/true_reward", ".2f")]
    assert metrics_postfix({"reward/mean": 0.5}, fields) == "reward 0.50"
    assert metrics_postfix({}, fields) == ""


def _spec(total: int = 30, stride: int = 1) -> StageProgress:
    return StageProgress("ppo", total, "iter", lambda row: f"kl {row['kl']:.2f}", stride=stride)


def test_bars_are_drawn_only_in_a_console_session(capsys):
    with StageBar(_spec()) as bar:
        bar.show(30, {"kl": 0.1})
    assert capsys.readouterr().out == ""
    with logs.console_session(), StageBar(_spec()) as bar:
        bar.show(1, {"kl": 0.25})
        bar.show(30, {"kl": 0.125})
    out = capsys.readouterr().out
    assert "ppo" in out and "30/30" in out and "kl 0.12" in out
    assert out.count("\n") == 1  # one line per stage (redrawn in place)


def test_a_resumed_stage_counts_earlier_steps_as_done(capsys):
    with logs.console_session(), StageBar(_spec(total=100, stride=10)) as bar:
        bar.show(60, {"kl": 0.0})
        assert (bar._bar.initial, bar._bar.n) == (50, 60)
        bar.show(40, {"kl": 0.0})  # a restarted worker group replays from its checkpoint
        assert bar._bar.n == 40


def test_the_driver_follows_the_rows_rank_0_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.01)
    path = tmp_path / "metrics.jsonl"
    _append(path, {"step": 9, "kl": 9.0})  # before this stage: not shown

    def rank_0() -> None:
        for step in (1, 2, 3):
            time.sleep(0.02)
            _append(path, {"step": step, "kl": step / 10})

    writer = threading.Thread(target=rank_0)
    with logs.console_session(), follow_metrics(_spec(total=3), tmp_path):
        writer.start()
        writer.join()
    out = capsys.readouterr().out
    assert "3/3" in out and "kl 0.30" in out and "kl 9.00" not in out


def test_each_recovery_is_one_line_above_the_bar_once(tmp_path, capsys, monkeypatch):
    """Fault counters are running totals: a counter that grows prints one line saying what
    happened; the rows a resumed stage writes again (its file rewritten) repeat nothing."""
    monkeypatch.setattr(progress, "POLL_S", 0.01)
    path = tmp_path / "metrics.jsonl"
    first = [
        {"step": 1, "kl": 0.1, "faults/reward_restarts": 1.0},
        {"step": 2, "kl": 0.2, "faults/reward_restarts": 1.0},
        {"step": 3, "kl": 0.3, "faults/reward_restarts": 1.0, "faults/rollout_replacements": 1},
    ]
    with logs.console_session(), follow_metrics(_spec(total=3), tmp_path):
        _append(path, *first)
        time.sleep(0.2)
        # A learner restart from the checkpoint at 2 rewrites the file (a new one replaces it).
        _append(tmp_path / "new.jsonl", *first[:2], first[2] | {"faults/learner_restarts": 1})
        os.replace(tmp_path / "new.jsonl", path)
        time.sleep(0.2)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "so far)" in line]
    assert notes == [
        "ppo step 1: a reward actor died; Ray restarted it and its scoring was repeated "
        "(reward_restarts: 1 so far)",
        "ppo step 3: a rollout actor was out of restarts; the pool replaced it with a new one "
        "(rollout_replacements: 1 so far)",
        "ppo step 3: a learner worker died; Ray Train restarted the learners from the last "
        "checkpoint and this iteration was trained again (learner_restarts: 1 so far)",
    ]


_SCRIPT = """
import logging, os, sys
from pathlib import Path
from ray_rlhf import logs
log = logging.getLogger("ray_rlhf.test")
with logs.console_session(verbose=sys.argv[2] == "verbose"):
    log.info("before the run dir")
    logs.attach_driver_log(Path(sys.argv[1]))
    print("a library prints", flush=True)
    os.write(2, b"a C++ core writes to fd 2\\n")
    log.info("header line")
    log.debug("file only")
    log.warning("a warning")
    logs.console_print("result table")
print("after the session")
"""


def _run_script(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "run"), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_quiet_console_keeps_people_lines_and_logs_the_rest(tmp_path):
    proc = _run_script(tmp_path, "quiet")
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "run" / "logs" / "driver.log"
    assert proc.stdout.splitlines() == [
        "[ray-rlhf] before the run dir",
        f"[ray-rlhf] run dir {tmp_path / 'run'}; Ray, vLLM, DeepSpeed and transformers logs "
        f"go to {log.parent}/ (--verbose shows them here)",
        "[ray-rlhf] header line",
        "result table",
        "after the session",  # fds 1 and 2 are restored
    ]
    assert proc.stderr == "[ray-rlhf] a warning\n"
    text = log.read_text()
    for line in ("a library prints", "a C++ core writes to fd 2", "DEBUG", "file only"):
        assert line in text


def test_verbose_console_shows_everything(tmp_path):
    proc = _run_script(tmp_path, "verbose")
    assert proc.returncode == 0, proc.stderr
    assert "a library prints" in proc.stdout and "header line" in proc.stdout
    assert "a C++ core writes to fd 2" in proc.stderr
    assert "file only" in (tmp_path / "run" / "logs" / "driver.log").read_text()


def test_workers_reach_the_console_only_when_asked():
    assert logs.shows_infrastructure_logs()  # library use, tests, experiments
    with logs.console_session():
        assert not logs.shows_infrastructure_logs()
    with logs.console_session(verbose=True):
        assert logs.shows_infrastructure_logs()


def test_verbose_flag_on_every_command_anywhere_among_the_overrides():
    for command in ("demo", "sft", "ppo", "train-rm"):
        args = cli.parse_args([command, "--verbose", "sft.steps=3"])
        assert args.verbose and args.overrides == ["sft.steps=3"]
    args = cli.parse_args(["demo", "a.b=1", "-v", "c.d=2"])
    assert args.verbose and args.overrides == ["a.b=1", "c.d=2"]
    assert not cli.parse_args(["demo"]).verbose
    with pytest.raises(SystemExit):
        cli.parse_args(["demo", "--no-such-flag"])


def test_an_unexpected_error_is_named_with_its_log(tmp_path, capsys):
    log = logs.attach_driver_log(tmp_path / "run")
    (log.parent / "ray").mkdir()
    try:
        raise RuntimeError("a worker died\nsecond line")
    except RuntimeError as error:
        assert logs.report_failure(error, "ray-rlhf demo") == 1
    assert capsys.readouterr().err.splitlines() == [
        "ray-rlhf demo: failed: RuntimeError: a worker died",
        f"Full traceback: {log}",
        f"Ray worker logs (vLLM, DeepSpeed, Ray Train): {log.parent / 'ray'}/",
    ]
    assert "Traceback (most recent call last)" in log.read_text()


def test_an_embedded_cluster_leaves_its_session_logs_in_the_run_dir(tmp_path, monkeypatch):
    from ray_rlhf.distributed import runtime

    session = tmp_path / "session" / "logs"
    session.mkdir(parents=True)
    (session / "worker-1.out").write_text("vLLM engine config ...\n")
    log = logs.attach_driver_log(tmp_path / "run")
    monkeypatch.setattr(runtime, "_SESSION_LOGS", session)
    runtime.shutdown_ray(True)
    copied = log.parent / "ray" / "worker-1.out"
    assert copied.read_text() == "vLLM engine config ...\n"
    assert runtime._SESSION_LOGS is None
