#!/usr/bin/env bash
# The test command: lint, type-check and run the test suite in the local .venv.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== pyright (tensorrt-stubs for agent/backends/tensorrt/)"
pyright
echo "== import-linter"; lint-imports
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
echo "== pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected: that is a failure of this command, not a pass.
exit "$rc"
