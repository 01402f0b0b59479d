"""Give freed heap back to the system after many sessions ended at once.

glibc keeps what ``free`` returns in its arenas; after a burst of sessions ends (a thousand that
never completed ICE timing out together, a room of hundreds closing) the node's RSS would stay at
its peak although the memory is free.  ``HeapTrimmer.observe(live)`` is told the number of live
participants once a housekeeping tick; when that fell by ``threshold`` or more from its peak since
the last trim, it calls glibc's ``malloc_trim(0)`` (a few milliseconds on a node's heap), at most
once per ``min_interval_ms``.  Where there is no glibc (musl, other systems) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: participants released since the last trim's peak that are worth trimming for
TRIM_THRESHOLD = 32
TRIM_MIN_INTERVAL_MS = 5_000


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


class HeapTrimmer:
    def __init__(self, threshold: int = TRIM_THRESHOLD, min_interval_ms: int = TRIM_MIN_INTERVAL_MS) -> None:
        self.threshold = threshold
        self.min_interval_ms = min_interval_ms
        self.peak = 0
        self.trims = 0
        self._last_ms: int | None = None

    @property
    def available(self) -> bool:
        return _TRIM is not None

    def observe(self, live: int, now_ms: int) -> bool:
        """``live`` participants now; True when it trimmed the heap."""
        if live > self.peak:
            self.peak = live
        if self.peak - live < self.threshold:
            return False
        if self._last_ms is not None and now_ms - self._last_ms < self.min_interval_ms:
            return False
        self.peak = live
        self._last_ms = now_ms
        if _TRIM is None:
            return False
        _TRIM(0)
        self.trims += 1
        log.debug("heap trimmed after sessions ended (%d live)", live)
        return True
