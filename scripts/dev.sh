#!/usr/bin/env bash
# Set up and run LevelChat locally: a control plane (embedded SQLite store, in memory in dev mode) and one SFU node
# registered with it, in dev mode on loopback. Open the printed demo URL in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .

.venv/bin/python -m control --dev &
control_pid=$!
trap 'kill $control_pid 2>/dev/null || true' EXIT INT TERM
sleep 1
echo "demo page: http://127.0.0.1:7880/  (publish your camera via WHIP, watch via WHEP)"
.venv/bin/python -m sfu --dev --control-url http://127.0.0.1:7700
