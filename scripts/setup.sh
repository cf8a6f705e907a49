#!/usr/bin/env bash
# Create (or refresh) the local virtual environment .venv and install Edge Agent into it.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      plus test tools (pytest, ruff, pyright, hypothesis, tensorrt-stubs,
#                             playwright: it drives the system's Chromium, never downloads one)
#                             and the fleet extra (psycopg, for the PostgreSQL fleet store)
# Idempotent: re-running only installs what changed.
# PYTHON=python3.10 picks the interpreter of a new venv; EDGE_AGENT_VENV=DIR another venv directory
# than .venv (scripts/test.sh keeps one per interpreter: .venv-3.10, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${EDGE_AGENT_VENV:-.venv}"
extra="${1:-}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: Python >= 3.10 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.edge-agent-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edge-agent${extra:+[$extra]} into $VENV"
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
