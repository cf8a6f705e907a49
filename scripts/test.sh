#!/usr/bin/env bash
# The test command: lint, type-check and run the test suite, under each supported Python.
# Usage: scripts/test.sh [extra pytest args]
#
# EDGE_AGENT_PYTHONS (default "3.12 3.10": JetPack 7 and JetPack 6) lists the interpreters. The
# first is the primary: lint and type-check run in its venv and its suite prints here. Every other
# one runs the same suite at the same time (the CI machine has 2 cores and one suite takes
# ~20 min), except the tests marked `scale` (hundreds of simulated devices, a browser: the system
# at load, not the interpreter), into a log shown at the end; the command fails if any fails. Each interpreter
# is found on PATH (pythonX.Y), in pyenv's versions directories or by `uv python find`, and gets
# its own venv: .venv when .venv is absent (primary) or already that version, else .venv-X.Y.
# EDGE_AGENT_PYTHONS="" (or PYTHON=... without EDGE_AGENT_PYTHONS) runs one suite in .venv with
# $PYTHON (default python3), as before.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "test.sh: error: $*" >&2; exit 2; }

# py_version PYTHON [IMPORTS]: its X.Y, where it runs (and imports IMPORTS).
py_version() {
  "$1" -c "${2:-pass}; import sys; print('%d.%d' % sys.version_info[:2])" 2>/dev/null
}

# find_python X.Y: the path of a Python X.Y that can create venvs (ensurepip), or nothing.
find_python() {
  local want="$1" cand
  local -a cands=()
  cands+=("$(command -v "python$want" || true)")
  # pyenv's own interpreters, newest patch release first (a pyenv shim only runs "activated" ones)
  while IFS= read -r cand; do cands+=("$cand"); done < <(
    ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python"$want" 2>/dev/null | sort -rV
  )
  if command -v uv >/dev/null; then cands+=("$(uv python find "$want" 2>/dev/null || true)"); fi
  for cand in "${cands[@]}"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    if [ "$(py_version "$cand" 'import ensurepip, venv')" = "$want" ]; then
      echo "$cand"
      return 0
    fi
  done
  true
}

VERSIONS=()  # X.Y of each interpreter, primary first
INTERPS=()   # its path
VENVS=()     # its venv directory
# PYTHON=... alone (the README's way to pick one interpreter) still runs just that one.
default_pythons="3.12 3.10"
[ -n "${PYTHON:-}" ] && default_pythons=""
read -r -a WANTED <<<"${EDGE_AGENT_PYTHONS-$default_pythons}"
if [ "${#WANTED[@]}" = 0 ]; then
  VERSIONS=("") INTERPS=("${PYTHON:-python3}") VENVS=(.venv)
fi
dot_venv="$( [ -x .venv/bin/python ] && py_version .venv/bin/python || true)"
for want in "${WANTED[@]}"; do
  [[ "$want" =~ ^3\.[0-9]+$ ]] || die "EDGE_AGENT_PYTHONS: '$want' is not a version like 3.12"
  interp="$(find_python "$want")"
  [ -n "$interp" ] || die "Python $want not found (looked for python$want on PATH, in" \
    "${PYENV_ROOT:-$HOME/.pyenv}/versions/$want.*, and with \`uv python find $want\`)." \
    "Install it (pyenv install $want, uv python install $want, or the distribution's" \
    "python$want and python$want-venv), or set EDGE_AGENT_PYTHONS to the versions to test."
  if [ "$dot_venv" = "$want" ] || { [ -z "$dot_venv" ] && [ "${#VENVS[@]}" = 0 ]; }; then
    venv=.venv
  else
    venv=".venv-$want"
  fi
  VERSIONS+=("$want") INTERPS+=("$interp") VENVS+=("$venv")
done
for i in "${!VENVS[@]}"; do
  PYTHON="${INTERPS[$i]}" EDGE_AGENT_VENV="${VENVS[$i]}" scripts/setup.sh dev
done
echo "== Python: $(for i in "${!VENVS[@]}"; do
  printf '%s (%s) ' "$("${VENVS[$i]}/bin/python" --version 2>&1)" "${VENVS[$i]}"
done)"
export PATH="$PWD/${VENVS[0]}/bin:$PATH"

echo "== mosquitto, systemd-analyze, postgresql, chromium, promtool (real brokers, databases and browser)"
MISSING=""
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  MISSING="mosquitto"
fi
command -v systemd-analyze >/dev/null || MISSING="$MISSING systemd"
# the PostgreSQL fleet store's tests start a real server from the distribution's binaries
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  MISSING="$MISSING postgresql"
fi
# the dashboard's browser tests drive the distribution's headless Chromium through Playwright
if [ ! -x /usr/bin/chromium ]; then MISSING="$MISSING chromium"; fi
# the Prometheus rules and the exported series are checked with promtool
command -v promtool >/dev/null || MISSING="$MISSING prometheus"
if [ -n "$MISSING" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  # shellcheck disable=SC2086 # MISSING is a list of package names
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING \
    || echo "could not install$MISSING; the MQTT / systemd unit / PostgreSQL store / browser / promtool tests will be skipped"
fi
# The other interpreters' suites start now, before lint, and run alongside the primary's; each in
# its own session (process group), so that an interrupt or a
# failed lint step stops it with the brokers and daemons its tests started (SIGTERM: a background
# job of a script ignores SIGINT).
PIDS=()
LOGS=()
stop_background() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
}
trap stop_background EXIT
trap 'exit 130' INT TERM
for i in "${!VENVS[@]}"; do
  [ "$i" = 0 ] && continue
  LOGS[i]="${VENVS[$i]}/pytest-${VERSIONS[$i]}.log"
  # the same suite but the `scale` tests (hundreds of simulated devices, a browser): they
  # test the system at load, not the interpreter, and run under the first Python
  setsid "${VENVS[$i]}/bin/python" -m pytest -p no:cacheprovider -m "not scale" "$@" \
    >"${LOGS[$i]}" 2>&1 &
  PIDS+=("$!")
  echo "== pytest under Python ${VERSIONS[$i]} started in the background (${LOGS[$i]})"
done

echo "== ruff"
ruff check .
ruff format --check .
echo "== pyright (tensorrt-stubs for agent/backends/tensorrt/)"
pyright
echo "== import-linter"; lint-imports
echo "== pytest${VERSIONS[0]:+ under Python ${VERSIONS[0]}}"
set +e
python -m pytest "$@"
rc=$?
# pytest exits 2 when interrupted (Ctrl-C): stop the others rather than wait for them.
[ "$rc" = 2 ] && exit 2
summary="${VERSIONS[0]:-python}: exit $rc"
for i in "${!VENVS[@]}"; do
  [ "$i" = 0 ] && continue
  wait "${PIDS[$((i - 1))]}"
  sub=$?
  echo "== pytest under Python ${VERSIONS[$i]} (${LOGS[$i]}): exit $sub"
  cat "${LOGS[$i]}"
  summary="$summary, ${VERSIONS[$i]}: exit $sub"
  [ "$rc" = 0 ] && rc=$sub
done
set -e
PIDS=()
echo "== pytest results: $summary"
# pytest exits 5 when no test was collected: that is a failure of this command, not a pass.
exit "$rc"
