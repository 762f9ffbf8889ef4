"""Ray's real autoscaler on this machine: a head node plus the `rollout_gpu` and
`learner_gpu` node types of cluster.yaml (declaring its custom resources `rollout` and
`learner`; CPUs instead of GPUs), launched as real raylets by Ray's fake multi-node provider.

A PPO job submitted with `resources.custom_resources=always` must make the autoscaler launch
one learner and one rollout node and place the learner worker and the rollout actor there;
growing the rollout pool mid-run (control.yaml) must launch another *rollout* node and no
learner node; shrinking it must let that node go after the idle timeout while the job keeps
its other nodes. The job pauses between phases (`pause_ppo_after_iterations`) so each
assertion sees a settled cluster. Node and actor placement come from Ray's state API
(dashboard REST), launches and terminations from the autoscaler's own log.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from pathlib import Path

import pytest
import yaml
from ray_head import ROOT, Head, dashboard_get, ray_cli, start_head

pytestmark = pytest.mark.integration

# The autoscaler cannot terminate a node sooner than this after it went idle. Shorter
# timeouts let Ray schedule onto a node that is being terminated (an ActorDiedError).
IDLE_TIMEOUT_MIN = 1.0
ITERATIONS = 4
JOB = (
    "python jobs/train_ppo.py resources.custom_resources=always"
    " learner.num_workers=1 rollout.num_actors=1 reward.num_actors=1 rollout.kv_cache_mib=16"
    " rollout.resize_timeout_s=240"
    f" ppo.iterations={ITERATIONS} ppo.eval_every={ITERATIONS} ppo.checkpoint_every={ITERATIONS}"
    " ppo.prompts_per_iteration=4 ppo.minibatch_size=16 ppo.micro_batch_size=8"
    " data.toyworld.n_train_prompts=32 data.toyworld.n_test_prompts=8"
)
_PHASE_TIMEOUT_S = 300


def _autoscaling_config(gcs_address: str) -> dict:
    """Head + cluster.yaml's rollout and learner node types for the fake provider, with the
    custom resources cluster.yaml gives them (read from the file).

    The head has the CPUs for the job driver and the CPU-only reward actor (cluster.yaml's
    `cpu_worker` type; left out to keep the machine's process count down). A worker node
    has one CPU: one rollout actor or one learner worker fits.
    """
    node = {"node_config": {}, "min_workers": 0, "max_workers": 2}
    types = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    worker_types = {  # cluster.yaml's custom resources; one CPU instead of the GPU
        name: {**node, "resources": {"CPU": 1, **_custom(types[name]["resources"])}}
        for name in ("rollout_gpu", "learner_gpu")
    }
    assert [set(_custom(worker_types[n]["resources"])) for n in worker_types] == [
        {"rollout"},
        {"learner"},
    ], "cluster.yaml's node types no longer declare the resources this test places by"
    return {
        "cluster_name": "ray-rlhf-fake",
        "max_workers": 4,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _custom(resources: dict) -> dict:
    """A node type's custom resources (all but CPU and GPU)."""
    return {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head whose autoscaler launches fake nodes (real raylets) of the two types."""
    from ray_head import free_ports

    (gcs,) = free_ports(1)
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(_autoscaling_config(f"127.0.0.1:{gcs}")))
    args = (f"--autoscaling-config={config}", "--num-cpus=2")
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with start_head("autoscaling", args, env, gcs_port=gcs) as head:
        yield head


def _state(head: Head, kind: str) -> list[dict]:
    """Rows of the state API's `kind` table (`nodes`, `actors`)."""
    reply = dashboard_get(head, f"/api/v0/{kind}?limit=1000&detail=true")
    return reply["data"]["result"]["result"]


def _placement(head: Head) -> dict[str, list[str]]:
    """node id (shortened, with its type) -> class names of the live actors on it."""
    kinds = {n["node_id"]: _node_kind(n) for n in _state(head, "nodes") if n["state"] == "ALIVE"}
    placed: dict[str, list[str]] = {}
    for actor in _state(head, "actors"):
        if actor["state"] == "ALIVE":
            node = actor["node_id"]
            placed.setdefault(f"{kinds.get(node, '?')}:{node[-6:]}", []).append(actor["class_name"])
    return placed


def _node_kind(node: dict) -> str:
    resources = node.get("resources_total", {})
    for kind, key in (("rollout_gpu", "rollout"), ("learner_gpu", "learner")):
        if resources.get(key):
            return kind
    return "head"


def _worker_nodes(head: Head) -> dict[str, set[str]]:
    """node type -> ids of the live worker nodes of that type (from their resources)."""
    found: dict[str, set[str]] = {"rollout_gpu": set(), "learner_gpu": set()}
    for node in _state(head, "nodes"):
        kind = _node_kind(node)
        if node["state"] == "ALIVE" and kind in found:
            found[kind].add(node["node_id"])
    return found


def _actor_nodes(head: Head, class_name: str) -> list[str]:
    """Node ids of the live actors of `class_name`."""
    return [
        a["node_id"]
        for a in _state(head, "actors")
        if a["class_name"] == class_name and a["state"] == "ALIVE"
    ]


def _wait(what: str, condition, timeout_s: float = _PHASE_TIMEOUT_S, job=None):
    """Poll `condition()` until truthy; fail with `what` (and the job's log tail) if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if job is not None:
            job.raise_if_finished_early()
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class _Job:
    """A submitted job, its run dir and its control file."""

    def __init__(self, head: Head, output_dir: Path):
        self.head = head
        self.id = f"rr-auto-{secrets.token_hex(4)}"
        self.run_dir = output_dir / "auto"
        self.control = self.run_dir / "control.yaml"

    def status(self) -> str:
        return dashboard_get(self.head, f"/api/jobs/{self.id}")["status"]

    def logs(self) -> str:
        out = ray_cli(
            self.head, "job", "logs", "--address", self.head.dashboard_url, self.id, timeout=60
        )
        return out.stdout[-6000:]

    def raise_if_finished_early(self) -> None:
        status = self.status()
        if status in ("FAILED", "STOPPED"):
            raise AssertionError(f"job {status}:\n{self.logs()}")

    def paused_at(self, iteration: int) -> bool:
        paused = self.control.with_name("control.yaml.paused")
        return paused.is_file() and paused.read_text().strip() == str(iteration)

    def write_control(self, text: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.control.write_text(text)


def _autoscaler_events(head: Head) -> list[str]:
    """The autoscaler's launch / termination lines from its log (monitor.log)."""
    lines = []
    for log in head.temp_dir.glob("session_2*/logs/monitor.log"):  # not session_latest
        for line in log.read_text(errors="replace").splitlines():
            if "Adding" in line and "node(s) of type" in line or "Terminating" in line:
                lines.append(line.strip())
    return lines


def test_autoscaler_launches_rollout_and_learner_nodes_and_scales_rollouts_alone(
    autoscaling_head, base_model, tmp_path
):
    head = autoscaling_head
    job = _Job(head, tmp_path.resolve() / "runs")
    job.write_control("pause_ppo_after_iterations: 1\n")
    entrypoint = [
        *shlex.split(JOB),
        f"model.path={base_model}",
        f"run.output_dir={job.run_dir.parent}",
        "run.name=auto",
    ]
    t0 = time.perf_counter()
    submitted = ray_cli(
        head, "job", "submit", "--no-wait", "--address", head.dashboard_url,
        "--submission-id", job.id, "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps({"env_vars": {"PYTHONUNBUFFERED": "1"}}),
        "--", *entrypoint, timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-4000:]
    up = gone = float("nan")
    try:
        # 1. Scale-up from zero: one learner node and one rollout node, each used by its pool.
        _wait("the job to pause after iteration 1", lambda: job.paused_at(1), job=job)
        up = time.perf_counter() - t0
        nodes = _worker_nodes(head)
        rollout_at = _actor_nodes(head, "RolloutActor")
        learner_at = _actor_nodes(head, "RayTrainWorker")
        assert len(rollout_at) == 1 and len(learner_at) == 1, (rollout_at, learner_at)
        assert rollout_at[0] in nodes["rollout_gpu"], (rollout_at, nodes)
        assert learner_at[0] in nodes["learner_gpu"], (learner_at, nodes)
        print(f"[autoscaling] after iteration 1: {_placement(head)}")
        first_rollout_node = rollout_at[0]
        learner_nodes = nodes["learner_gpu"]

        # 2. Grow the rollout pool: another rollout node, no learner node.
        job.write_control("rollout_actors: 2\npause_ppo_after_iterations: 2\n")
        _wait("the job to pause after iteration 2", lambda: job.paused_at(2), job=job)
        grown = _worker_nodes(head)
        rollout_at = _actor_nodes(head, "RolloutActor")
        assert len(rollout_at) == 2 and len(set(rollout_at)) == 2, rollout_at
        assert set(rollout_at) <= grown["rollout_gpu"], (rollout_at, grown)
        assert grown["learner_gpu"] == learner_nodes, (grown, learner_nodes)
        print(f"[autoscaling] after growing: {_placement(head)}")
        (new_node,) = set(rollout_at) - {first_rollout_node}

        # 3. Shrink it: the idle rollout node goes after the idle timeout; the rest stays.
        job.write_control("rollout_actors: 1\npause_ppo_after_iterations: 3\n")
        _wait("the job to pause after iteration 3", lambda: job.paused_at(3), job=job)
        (kept,) = _actor_nodes(head, "RolloutActor")
        idle = ({first_rollout_node, new_node} - {kept}).pop()
        t_shrink = time.perf_counter()
        _wait(
            "the idle rollout node to be terminated",
            lambda: idle not in _worker_nodes(head)["rollout_gpu"],
            timeout_s=IDLE_TIMEOUT_MIN * 60 + 120,
            job=job,
        )
        gone = time.perf_counter() - t_shrink
        after = _worker_nodes(head)
        assert kept in after["rollout_gpu"] and after["learner_gpu"] == learner_nodes, after

        job.write_control("rollout_actors: 1\n")
        _wait("the job to succeed", lambda: job.status() == "SUCCEEDED", job=job)
    except BaseException:
        print(job.logs())
        raise
    finally:
        print(f"[autoscaling] scale-up from zero to iteration 1: {up:.0f} s")
        print(f"[autoscaling] idle rollout node terminated {gone:.0f} s after the shrink")
        print(f"[autoscaling] total {time.perf_counter() - t0:.0f} s")
        for line in _autoscaler_events(head):
            print(f"[autoscaling] {line}")
    assert (job.run_dir / "DONE.json").is_file()
