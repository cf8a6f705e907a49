#!/usr/bin/env bash
# Create (or refresh) the local virtual environment .venv and install Edge Agent into it.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      plus test tools (pytest, ruff, pyright, hypothesis, tensorrt-stubs,
#                             playwright: it drives the system's Chromium, never downloads one)
#                             and the fleet extra (psycopg, for the PostgreSQL fleet store)
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extra="${1:-}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: Python >= 3.10 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=".venv/.edge-agent-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edge-agent${extra:+[$extra]} into .venv"
  "${PIP[@]}" install --upgrade pip
  if [ "$extra" = "dev" ]; then
    "${PIP[@]}" install -e ".[dev,fleet]"
    # The stubs declare a dependency on the tensorrt wheel, which comes from NVIDIA's own index
    # (and, on a Jetson, from JetPack): install the type stubs alone.
    "${PIP[@]}" install --no-deps "tensorrt-stubs>=10.3"
  else
    "${PIP[@]}" install -e .
  fi
  touch "$stamp"
fi
