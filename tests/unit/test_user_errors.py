"""User errors: one recognisable base class, one paragraph on stderr, exit code 2, the
traceback in the run's `logs/driver.log` (or under .cache/ before a run dir exists)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ray_rlhf import cli, logs
from ray_rlhf.config import ConfigError
from ray_rlhf.data import DataValidationError
from ray_rlhf.errors import CheckpointError, RewardError, UserError
from ray_rlhf.loops.common import RunDirError
from ray_rlhf.models import ModelDirError
from ray_rlhf.reward.rules import RuleRowError


@pytest.fixture(autouse=True)
def _no_leftover_handlers():
    """`cli.main` and `prepare_run_dir` (here or in earlier tests) add console / driver-log
    handlers to the `ray_rlhf` logger; each test starts and ends without them."""
    logger = logging.getLogger("ray_rlhf")

    def drop() -> None:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
            handler.close()

    drop()
    yield
    drop()


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (ConfigError, "config error"),
        (RunDirError, "run dir error"),
        (DataValidationError, "data error"),
        (ModelDirError, "model error"),
        (RewardError, "reward error"),
        (RuleRowError, "reward error"),
        (CheckpointError, "checkpoint error"),
    ],
)
def test_every_user_error_is_recognisable(cls, kind):
    assert issubclass(cls, UserError)
    assert cls.kind == kind and cls.hint


def test_report_writes_one_paragraph_and_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_RLHF_CACHE", str(tmp_path / "cache"))
    try:
        raise DataValidationError("p.jsonl", "empty text", row=3, field="prompt")
    except DataValidationError as error:
        code = logs.report_user_error(error, "ray-rlhf ppo")
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "ray-rlhf ppo: data error: p.jsonl row 3, field 'prompt': empty text"
    assert lines[1] == DataValidationError.hint
    assert lines[2].startswith(f"Full traceback: {tmp_path / 'cache' / 'errors'}")
    assert "Traceback" not in err
    log = Path(lines[2].removeprefix("Full traceback: "))
    assert "Traceback (most recent call last)" in log.read_text()


def test_bad_override_exits_2_without_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_RLHF_CACHE", str(tmp_path))
    assert cli.main(["ppo", "ppo.kl.cof=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ray-rlhf ppo: config error: ppo.kl.cof: unknown key")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3


def test_data_error_goes_to_the_run_driver_log_before_ray(tmp_path, capsys):
    import ray

    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "sort 1 2 =", "response": ""}\n')
    argv = ["sft", f"run.output_dir={tmp_path}", f"data.sft_path={sft}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err  # after the tiny base model's "Writing model shards" bar
    assert "Traceback" not in err
    err = err[err.index("ray-rlhf sft:") :]
    assert err.startswith(f"ray-rlhf sft: data error: {sft} row 0, field 'response': empty")
    log = tmp_path / "sft" / "logs" / "driver.log"
    assert err.strip().endswith(f"Full traceback: {log}")
    assert "Traceback (most recent call last)" in log.read_text()
    assert not ray.is_initialized()


def test_a_finished_run_dir_is_a_run_dir_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_RLHF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "DONE.json").write_text("{}")
    assert cli.main(["sft", f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ray-rlhf sft: run dir error: run.name:")
    assert "run.overwrite=true" in err
    assert not (tmp_path / "sft" / "logs").exists()  # the finished run is left alone


# --------------------------------------------------------------------- errors in Ray Train workers


def test_a_worker_records_user_errors_only(tmp_path):
    from ray_rlhf.distributed.trainer import WorkerUserError, _recording_user_errors

    record = tmp_path / "logs" / "ppo_user_error.json"

    def crashes(config):
        raise RuntimeError("lost a node")

    with pytest.raises(RuntimeError):
        _recording_user_errors(crashes, record)({})
    assert not record.exists()  # a crash stays retryable

    def bad_rule(config):
        raise RewardError("row 3 (prompt id 'p1', response 'x'): rule 'r.py:f' raised KeyError")

    with pytest.raises(RewardError):
        _recording_user_errors(bad_rule, record)({})
    error = WorkerUserError.from_record(record)
    assert isinstance(error, UserError)
    assert (error.kind, error.hint) == ("reward error", RewardError.hint)
    assert str(error).startswith("row 3 (prompt id 'p1'")
    assert "Traceback" in error.details and "bad_rule" in error.details


def test_user_errors_from_ray_actors_are_unwrapped():
    from ray.exceptions import RayTaskError

    from ray_rlhf.distributed.trainer import _user_error

    cause = RewardError("reward of row 0 is not finite (nan)")
    wrapped = RayTaskError("RewardScorer.compute", "remote traceback", cause)
    assert _user_error(wrapped) is cause
    assert _user_error(wrapped.as_instanceof_cause()) is cause
    assert _user_error(RayTaskError("f", "tb", RuntimeError("oom"))) is None
    assert _user_error(ValueError("a bug")) is None


def test_the_controller_callback_stops_only_on_a_record(tmp_path):
    from ray_rlhf.distributed.trainer import _StopOnUserError

    record = tmp_path / "ppo_user_error.json"
    callback = _StopOnUserError(record)
    callback.after_exception(None, {0: RuntimeError("crash")})  # no record: Ray Train retries
    record.write_text("{}")
    with pytest.raises(RuntimeError, match="user error"):
        callback.after_exception(None, {0: RuntimeError("recorded")})
