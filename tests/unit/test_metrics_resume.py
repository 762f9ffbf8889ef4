"""Exactly-once metrics across a resume: rows logged after the restored checkpoint are
dropped (JSONL) and purged (TensorBoard) before the resumed run logs them again, and the
driver's tail follows the rewritten file."""

from __future__ import annotations

import json

from ray_rlhf.metrics import MetricsWriter, read_metrics
from ray_rlhf.progress import MetricsTail


def _steps(path) -> list[int]:
    return [row["step"] for row in read_metrics(path)]


def _tb_events(run_dir) -> list:
    """Every event of the run's TensorBoard files, in file order (TFRecord framing:
    8-byte length, 4-byte crc, payload, 4-byte crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return events


def _purge_steps(run_dir) -> list[int]:
    """Steps of the SessionLog START markers TensorBoard purges later events from."""
    from tensorboardX.proto.event_pb2 import SessionLog

    return [
        e.step for e in _tb_events(run_dir)
        if e.HasField("session_log") and e.session_log.status == SessionLog.START
    ]


def test_a_resume_logs_every_step_once(tmp_path):
    with MetricsWriter(tmp_path) as writer:  # the interrupted run: checkpoint at 3, died at 5
        for step in range(0, 6):
            writer.log(step, {"reward/mean": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "rew')  # killed mid-write
    tail = MetricsTail(tmp_path / "metrics.jsonl")
    with MetricsWriter(tmp_path, resume_step=3) as writer:
        assert _steps(tmp_path) == [0, 1, 2, 3]
        for step in range(4, 8):
            writer.log(step, {"reward/mean": 10.0 + step})
    assert _steps(tmp_path) == list(range(8))
    assert [r["reward/mean"] for r in read_metrics(tmp_path)][3:5] == [3.0, 14.0]
    # The tail saw the file replaced and read it again from the start.
    assert [r["step"] for r in tail.new_rows()] == list(range(8))
    # TensorBoard hides the first run's events at steps >= 4 (its purge marker).
    assert _purge_steps(tmp_path) == [4]
    scalars = [(e.step, v.simple_value) for e in _tb_events(tmp_path) for v in e.summary.value]
    assert scalars[-4:] == [(4, 14.0), (5, 15.0), (6, 16.0), (7, 17.0)]


def test_resume_step_zero_drops_everything_and_none_appends(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(0, {"eval/x": 1.0})  # eval at start, then died before any checkpoint
        writer.log(1, {"x": 1.0})
    with MetricsWriter(tmp_path, tensorboard=False, resume_step=0) as writer:
        assert _steps(tmp_path) == []
        writer.log(0, {"eval/x": 2.0})
    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # no resume: plain append
        writer.log(1, {"x": 3.0})
    assert [json.dumps(r["step"]) for r in read_metrics(tmp_path)] == ["0", "1"]
