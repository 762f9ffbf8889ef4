"""Real process kills during PPO on the tiny model, each run checked against an
uninterrupted run with the same seed: it finishes, every iteration is in `metrics.jsonl`
exactly once, every iteration used the same prompts (`data/first_prompt_index`) and the same
rewards, and after each recovery the rollout actors serve the learner's weights
(`train/logprob_diff_max` < 1e-4). Checkpoints every 2 iterations, so a recovery replays
iterations that were already logged.

SIGKILL is sent by the chaos hooks of the run's control file to the learner worker (the
process kills itself) and to the rollout and reward actors' processes (rank 0 finds them in
the GCS's actor table), and by the test to the driver process of a `jobs/train_ppo.py`
run, which it then starts again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_rlhf.chaos import live_actor_pids
from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 4
_OVERRIDES = [
    "run.name=faults",
    "run.seed=3",
    "learner.num_workers=1",
    "learner.max_failures=1",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "rollout.max_restarts=1",
    "reward.num_actors=1",
    f"ppo.iterations={ITERATIONS}",
    "ppo.checkpoint_every=2",
    f"ppo.eval_every={ITERATIONS}",
    "ppo.prompts_per_iteration=8",
    "ppo.minibatch_size=16",
    "ppo.micro_batch_size=8",
    "ppo.lr=0.001",
    "data.toyworld.n_train_prompts=64",
    "data.toyworld.n_test_prompts=16",
]


def _overrides(out_dir: Path, base_model: Path) -> list[str]:
    return [f"run.output_dir={out_dir}", f"model.path={base_model}", *_OVERRIDES]


def _prepare(out_dir: Path, base_model: Path):
    """(config with resolved token limits, run dir), as `ppo.run_job` prepares them."""
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    cfg = load_config(None, _overrides(out_dir, base_model))
    run_dir = prepare_run_dir(cfg)
    return preflight(cfg, run_dir, ("ppo",), base_dir=base_model), run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base_model, ray_session):
    """Metrics rows of the uninterrupted run."""
    from ray_rlhf.loops import ppo

    cfg, run_dir = _prepare(tmp_path_factory.mktemp("reference"), base_model)
    return read_metrics(ppo.run(cfg, run_dir, base_model).metrics_dir)


def _assert_matches_reference(rows: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))  # each exactly once
    for row, ref in zip(rows, reference, strict=True):
        assert row["data/first_prompt_index"] == ref["data/first_prompt_index"]
        assert row["reward/mean"] == pytest.approx(ref["reward/mean"], abs=1e-6)
        assert row["train/logprob_diff_max"] < 1e-4
    assert rows[-1]["train/param_norm"] == pytest.approx(reference[-1]["train/param_norm"])


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture
def no_shm_left():
    """Fails the test if /dev/shm holds a segment after the run that was not there before."""
    before = _shm()
    yield
    assert _shm() - before == set()


def test_learner_sigkill_after_a_resize(tmp_path, base_model, reference, no_shm_left):
    """The rollout pool grows 1 -> 2 before iteration 1 (its owner creates the new actor),
    then the learner process SIGKILLs itself at the start of iteration 4, after iteration 3
    was logged (checkpoint at 2): Ray Train starts a new worker group from the checkpoint,
    which finds both actors, and iteration 3 is trained and logged again, replacing its
    first row. Row r samples with seed + r whatever the pool size, so the
    rewards still equal the one-actor reference run's. The reward actor's process is killed
    before iterations 1 and 2: the two restarts stay counted after the learner restart (the
    new rank 0 reads them from the pool's owner)."""
    from ray_rlhf.loops import ppo

    cfg, run_dir = _prepare(tmp_path, base_model)
    (run_dir / "control.yaml").write_text(
        "rollout_actors: 2\nkill_learner_at_iteration: 4\n"
        "kill_actors_at_iteration: {1: RewardScorer, 2: RewardScorer}\n"
    )
    result = ppo.run(cfg, run_dir, base_model)
    assert (run_dir / "control.yaml.kill_learner_at_iteration_fired").is_file()
    rows = read_metrics(result.metrics_dir)
    _assert_matches_reference(rows, reference)
    assert [r["rollout/actors"] for r in rows] == [2] * ITERATIONS
    assert [r.get("faults/learner_restarts", 0) for r in rows] == [0, 0, 1, 1]  # 3: the replay
    assert [r.get("faults/reward_restarts", 0) for r in rows] == [1, 2, 2, 2]
    assert live_actor_pids("RolloutActor") == []  # shutdown reached the actor the resize added


def test_rollout_and_reward_actor_sigkill(tmp_path, base_model, reference, no_shm_left):
    """Rank 0 SIGKILLs the rollout actor's process in the middle of iteration 2's generation
    (once it has used 50 ms of CPU on the submitted task) and again before iteration 4, and
    the reward actor's before iteration 3 (control-file hooks). Ray restarts each once
    (`max_restarts=1`): the rollout pool catches its restarted actor up with the current
    weights and re-issues the share that died in flight, the reward pool scores again. The
    second rollout kill leaves the actor dead for good, and the pool replaces it with a new
    one holding the current weights. Each recovery is counted in its iteration's row."""
    from ray_rlhf.loops import ppo

    cfg, run_dir = _prepare(tmp_path, base_model)
    (run_dir / "control.yaml").write_text(
        "kill_actors_in_flight_at_iteration: {2: RolloutActor}\n"
        "kill_actors_at_iteration: {3: RewardScorer, 4: RolloutActor}\n"
    )
    rows = read_metrics(ppo.run(cfg, run_dir, base_model).metrics_dir)
    in_flight = run_dir / "control.yaml.kill_actors_in_flight_at_iteration_2_fired"
    [kill] = [line.split() for line in in_flight.read_text().splitlines() if "killed" in line]
    assert float(kill[3]) >= 0.05  # the process was working on the submitted generation
    for it in (3, 4):
        assert (run_dir / f"control.yaml.kill_actors_at_iteration_{it}_fired").is_file()
    _assert_matches_reference(rows, reference)
    assert [r.get("faults/rollout_restarts", 0) for r in rows] == [0, 1, 1, 1]
    assert [r.get("faults/rollout_replacements", 0) for r in rows] == [0, 0, 0, 1]
    assert [r.get("faults/reward_restarts", 0) for r in rows] == [0, 0, 1, 1]
    assert live_actor_pids("RolloutActor") == []  # shutdown reached the replacement too


def _run_processes(temp_dir: Path, group: int) -> list[int]:
    """Processes of a killed run: its Ray processes (their command line names the run's Ray
    temp dir: raylet, GCS, workers, agents) and whatever else is left in its process group
    (e.g. a vLLM engine process)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_group = os.getpgid(proc.info["pid"]) == group
            if in_group or str(temp_dir) in " ".join(proc.info["cmdline"] or []):
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return pids


def _describe(pids: list[int]) -> str:
    """The pids' command lines, for an assertion message."""
    import psutil

    lines = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            lines.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:300]}")
    return "left behind:\n" + "\n".join(lines)


def test_driver_sigkill_then_rerun_resumes(tmp_path, base_model, reference, no_shm_left):
    """`jobs/train_ppo.py` pauses after iteration 3 (its checkpoint is at 2); the driver
    process alone gets SIGKILL, as from the OOM killer. No process of its embedded Ray
    cluster or its process group outlives it by more than a few seconds (Ray's reaper takes
    them down); the same command again resumes and finishes the run."""
    from paused_jobs import kill_when_paused

    short = Path(os.environ.get("RAY_RLHF_CACHE", ROOT / ".cache")) / f"rk{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_RLHF_RAY_TMP"] = str(short)
    args = [*_overrides(tmp_path, base_model), "resources.num_cpus=4"]
    run_dir = tmp_path / "faults"
    group = None
    try:
        group = kill_when_paused(
            "jobs/train_ppo.py",
            "pause_ppo_after_iterations: 3",
            args,
            run_dir,
            tmp_path / "killed.log",
            timeout_s=600,
            env=env,
            group=False,
        )
        deadline = time.monotonic() + 10
        while _run_processes(short, group) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _run_processes(short, group)
        assert left == [], _describe(left)
        logged = read_metrics(run_dir / "ppo")
        assert [r["step"] for r in logged] == [1, 2, 3]
        done = subprocess.run(
            [sys.executable, "jobs/train_ppo.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_matches_reference(read_metrics(run_dir / "ppo"), reference)
    finally:
        for pid in _run_processes(short, group or -1):  # only if an assertion above failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(short)], check=False)
