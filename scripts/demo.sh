#!/usr/bin/env bash
# The main job on the embedded default: CPU profile, bundled detector, bundled sample frames.
# Until the camera pipeline lands this runs what exists: detect the board, build the bundled
# detector (calibrate on calib/shapes-det, quantize to INT8, validate against FP32, cache),
# then run it on held-out frames and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
cache="${EDGE_AGENT_CACHE:-$PWD/.cache/edge-agent}"

echo "== edge-agent profile detect"
edge-agent profile detect
echo "== edge-agent build agent/data/models/shapes-det --profile cpu --precision auto"
edge-agent build agent/data/models/shapes-det --profile cpu --precision auto \
  --cache-dir "$cache" --json > .cache/build.json
artifact="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["artifact"])' .cache/build.json)"
python - .cache/build.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"artifact:  {r['artifact']}")
print(f"precision: {r['precision']} ({r['why']})")
PY
echo "== edge-agent infer (3 held-out frames)"
frames=(agent/data/heldout/shapes-det/*.jpg)
edge-agent infer "$artifact" "${frames[@]:0:3}"
echo "== edge-agent bench (3 s)"
edge-agent bench "$artifact" --seconds 3
