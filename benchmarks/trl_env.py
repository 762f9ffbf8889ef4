"""The TRL side's interpreter: a venv in `.cache/bench/venv`, created on first use.

TRL never becomes a dependency of the package. The venv sees the project venv's packages
through a `.pth` file (`site.addsitedir`, so the editable `ray_rlhf` install resolves too)
and gets only the pins of `requirements-bench.lock`, installed with `--no-deps`; torch is
checked to be the project's own afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

LOCK = Path(__file__).with_name("requirements-bench.lock")
_MARKER = "bench-env-ok"


def cache_root() -> Path:
    """`.cache/bench` of the project (or of `$RAY_RLHF_CACHE`)."""
    import os

    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("RAY_RLHF_CACHE", root / ".cache")) / "bench"


def venv_python(root: Path | None = None) -> Path:
    """Interpreter of the bench venv (may not exist yet)."""
    return (root or cache_root()) / "venv" / "bin" / "python"


def _torch_version(python: str | Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def ensure_bench_env(root: Path | None = None, *, install: bool = True) -> Path | None:
    """The bench venv's python, creating it when missing (pip from the registry).

    Args:
        root: Where the venv lives (`<root>/venv`); `.cache/bench` by default.
        install: Create / complete the venv when it is missing; False only looks.

    Returns:
        The interpreter, or None when the venv is absent and `install` is False.

    Raises:
        RuntimeError: when the install changed torch (it must stay the project's).
    """
    root = root or cache_root()
    venv = root / "venv"
    python = venv_python(root)
    marker = venv / _MARKER
    if marker.is_file() and marker.read_text() == LOCK.read_text():
        return python
    if not install:
        return None
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        project_site = sysconfig.get_paths()["purelib"]
        # addsitedir (not a bare path) so the project venv's own .pth files run too.
        line = f"import site; site.addsitedir({project_site!r})\n"
        Path(purelib, "zz_project_venv.pth").write_text(line)
    expected = _torch_version(sys.executable)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(LOCK)], check=True
    )
    got = _torch_version(python)
    if got != expected:
        raise RuntimeError(f"bench env: torch changed by the install ({expected} -> {got})")
    marker.write_text(LOCK.read_text())
    return python


if __name__ == "__main__":
    print(ensure_bench_env())
