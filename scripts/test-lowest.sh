#!/usr/bin/env bash
# Keep the dependency floors in pyproject.toml true: install the lowest versions it allows (every
# direct dependency at its floor, uv's --resolution lowest-direct) into .venv-lowest and run the
# unit tests there (tests/sfu, tests/levelchat, tests/control; not e2e or browser).
# scripts/test.sh runs it; on its own: scripts/test-lowest.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-lowest
# fresh each time: an install into an old venv would keep newer versions that still satisfy the floors
python3 -m venv --clear "$venv"
# uv (a PyPI package) resolves to the floors; pip has no lowest resolution
"$venv/bin/python" -m pip install -q uv
# uv does not read pip's configuration: a mirror that replaces PyPI (pip's index-url) is handed on;
# extra indexes and wheel directories are not (uv takes a package from the first source holding it,
# and a local wheel directory then hides the older releases the floors need)
index=${PIP_INDEX_URL:-$("$venv/bin/python" -m pip config get global.index-url 2>/dev/null || true)}
if [ -z "${UV_INDEX_URL:-}" ] && [ -n "$index" ]; then export UV_INDEX_URL="$index"; fi
"$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --resolution lowest-direct \
  -e ".[test-unit,redis]"
"$venv/bin/python" -m uv pip list --python "$venv/bin/python" 2>/dev/null \
  | grep -iE '^(aiohttp|aioice|pylibsrtp|cryptography|pyopenssl|uvloop|prometheus-client|pyjwt|multidict|cffi|google-crc32c|redis|aiortc|av|pytest|pytest-asyncio) ' \
  | tr -s ' ' | paste -sd ' ' | sed 's/^/lowest versions: /' >&2
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not e2e and not browser" \
  tests/sfu tests/levelchat tests/control tests/test_error_catalogue.py "$@"
