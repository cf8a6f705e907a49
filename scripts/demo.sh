#!/usr/bin/env bash
# The main job on the embedded default: `edge-agent run` with the CPU profile, the bundled
# detector and the bundled sample video (agent/data/agent.default.yaml). It builds the engine
# (calibrate on agent/data/calib/shapes-det, quantize to explicit INT8, validate against FP32, cache) or
# takes it from the cache, then serves the video through the worker pool at its own 15 fps,
# logging a stats line every 5 s, and exits when the video ends (Ctrl-C stops it earlier).
# Extra arguments go to `edge-agent run` (e.g. --print-results, --snapshots DIR, --source URI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/edge-agent run "$@"
