#!/usr/bin/env bash
# Keep the dependency floors in pyproject.toml true: install the lowest versions it allows (every
# direct dependency at its floor, uv's --resolution lowest-direct) into .venv-lowest and run the
# unit tests there (tests/sfu, tests/levelchat, tests/control; not e2e or browser).
# scripts/test.sh runs it; on its own: scripts/test-lowest.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-lowest
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# uv (a PyPI package) resolves to the floors; pip has no lowest resolution
"$venv/bin/python" -m pip install -q uv
"$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --resolution lowest-direct \
  -e ".[test-unit,redis]"
"$venv/bin/python" -m uv pip list --python "$venv/bin/python" 2>/dev/null \
  | grep -iE '^(aiohttp|aioice|pylibsrtp|cryptography|pyopenssl|uvloop|prometheus-client|pyjwt|multidict|cffi|google-crc32c|redis|aiortc|av|pytest|pytest-asyncio) ' \
  | tr -s ' ' | paste -sd ' ' | sed 's/^/lowest versions: /' >&2
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not e2e and not browser" \
  tests/sfu tests/levelchat tests/control tests/test_error_catalogue.py "$@"
