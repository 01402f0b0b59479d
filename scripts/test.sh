#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
# Firefox publishing simulcast, headless without a driver (tests/browser/test_browser_firefox_simulcast.py)
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)
# ICE-TCP in Chromium: nftables drops the browser's UDP in a private network namespace (tests/browser/test_browser_ice_tcp.py)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)
# shaped links (htb qdiscs) in a private network namespace (tests/browser/test_browser_uplink.py)
command -v tc >/dev/null 2>&1 || need_apt+=(iproute2)
# GStreamer webrtcbin + libnice clients (tests/e2e/test_gstreamer.py), driven from the system python3
gst_probe='import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); gi.require_version("GstSdp", "1.0")
from gi.repository import Gst
Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ("webrtcbin", "nicesrc", "vp8enc", "vp8dec", "rtpvp8pay", "videotestsrc"))'
/usr/bin/python3 -c "$gst_probe" >/dev/null 2>&1 || need_apt+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (install them, or run as root)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

.venv/bin/python -m ruff check levelchat sfu control bench tests examples
.venv/bin/python -m mypy
# dependency floors: the unit tests again on the lowest versions pyproject.toml allows (a separate
# .venv-lowest, about 2 minutes); only for a whole run (no pytest arguments)
if [ $# -eq 0 ]; then
  scripts/test-lowest.sh
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
