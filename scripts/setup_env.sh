#!/usr/bin/env bash
# Create the project's virtual environment on first use (and again when pyproject.toml changes).
# torch is installed first and pinned, so no later requirement can swap in a multi-GB CUDA build.
# Set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) to choose where torch comes from.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DISTDQN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.distdqn-installed"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "error: distdqn needs Python >= 3.10 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 2; }
  echo "creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "installing distdqn and its dependencies into $VENV (first run only)" >&2
  torch_args=()
  [ -n "${TORCH_INDEX_URL:-}" ] && torch_args=(--index-url "$TORCH_INDEX_URL")
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" "${torch_args[@]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" "torch==2.13.0"
  touch "$STAMP"
fi
