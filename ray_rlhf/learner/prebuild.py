"""Build DeepSpeed's CPU ops once into TORCH_EXTENSIONS_DIR (the project cache).

`python -m ray_rlhf.learner.prebuild` is run by scripts/bootstrap.sh so that no test or job
pays the ~30 s JIT build of the shared-memory all-reduce op.
"""

from __future__ import annotations

import os
import time


def prebuild() -> float:
    """Compile (or load from cache) DeepSpeed's `shm_comm` op; returns seconds taken."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    start = time.perf_counter()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load(verbose=False)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"deepspeed cpu ops ready in {prebuild():.1f} s")
