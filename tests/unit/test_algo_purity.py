"""The purity boundary: importing ray_rlhf.algo must not load any heavy framework."""

import json
import subprocess
import sys

FORBIDDEN = ("ray", "vllm", "deepspeed", "transformers", "datasets")

# Runs in a fresh interpreter so modules imported by other tests cannot hide a violation.
PROBE = f"""
import importlib, json, pkgutil, sys
import ray_rlhf.algo
for info in pkgutil.iter_modules(ray_rlhf.algo.__path__):  # every module, exported or not
    importlib.import_module(f"ray_rlhf.algo.{{info.name}}")
forbidden = {list(FORBIDDEN)!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


def test_importing_algo_loads_no_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"ray_rlhf.algo pulled in {loaded}"
