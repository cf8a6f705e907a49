#!/usr/bin/env bash
# The main job on the embedded default: CPU profile, bundled detector, bundled sample frames.
# Until the camera pipeline lands this runs what exists: detect the board, build the bundled
# detector (calibrate on calib/shapes-det, quantize to explicit INT8, validate against FP32,
# cache), run it on held-out frames and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
cache="${EDGE_AGENT_CACHE:-$PWD/.cache/edge-agent}"
bundle=agent/data/models/shapes-det

echo "== edge-agent profile detect"
edge-agent profile detect
echo
echo "== edge-agent build $bundle --profile cpu --precision auto"
edge-agent build "$bundle" --profile cpu --precision auto --cache-dir "$cache"
# The same build again is a cache hit; its JSON result names the artifact directory.
artifact="$(edge-agent build "$bundle" --profile cpu --precision auto --cache-dir "$cache" --json \
  | tail -n 1 | python -c 'import json, sys; print(json.load(sys.stdin)["artifact"])')"
echo
echo "== edge-agent infer (3 held-out frames)"
frames=(agent/data/heldout/shapes-det/*.jpg)
edge-agent infer "$artifact" "${frames[@]:0:3}"
echo
echo "== edge-agent bench (3 s)"
edge-agent bench "$artifact" --seconds 3
