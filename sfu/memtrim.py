"""Give freed heap back to the system after many sessions ended at once.

glibc keeps what ``free`` returns in its arenas; after a burst of sessions ends (a thousand that
never completed ICE timing out together, a room of hundreds closing) the node's RSS would stay at
its peak although the memory is free.  ``HeapTrimmer.observe(live)`` is told once a housekeeping tick
how much clients make the node hold (participants and open HTTP connections, idle WebSockets among
them: ``Node.held_by_clients``); when that fell by ``threshold`` or more from its peak since the
last trim, it calls glibc's ``malloc_trim(0)`` (a few milliseconds on a node's heap), at most
once per ``min_interval_ms``, and once more ``min_interval_ms`` after the last such trim: what a
burst frees comes in over seconds (connections closing one by one, sessions timing out in turn),
so a trim at the first drop leaves the rest.  Where there is no glibc (musl, other systems) it
does nothing.

How much of what Python frees reaches ``free`` depends on its allocator: pymalloc keeps a 1 MiB
arena while any object in it lives, so after a burst most arenas stay, pinned by a few
long-lived objects; with ``PYTHONMALLOC=malloc`` (the deployed images set it) every object is
glibc's and the trim returns nearly all (``docs/operations.md``, "Memory").  The follow-up trim
(the burst is over by then) first runs the collector's full pass, which also empties CPython's free lists of tuples, lists, dicts and
floats (their blocks pin heap pages the trim could otherwise return: 20 MiB of 28 after 2,000 idle
WebSockets); the node freezes what it made at start-up (``gc.freeze``), so that pass only looks at
what came after it (1.6 ms against 70 ms on a node with 66,000 start-up objects).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
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
        #: a drop was trimmed: trim once more when the interval has passed (the rest of a burst)
        self._follow_up = False

    @property
    def available(self) -> bool:
        return _TRIM is not None

    def observe(self, live: int, now_ms: int) -> bool:
        """``live``: what clients hold now; True when it trimmed the heap."""
        if live > self.peak:
            self.peak = live
        dropped = self.peak - live >= self.threshold
        if not dropped and not self._follow_up:
            return False
        if self._last_ms is not None and now_ms - self._last_ms < self.min_interval_ms:
            return False
        follow_up = not dropped
        self._follow_up = dropped  # a trim for a drop is followed by one more; that one by none
        self.peak = live
        self._last_ms = now_ms
        if _TRIM is None:
            return False
        started = time.perf_counter()
        if follow_up:  # not mid-burst, while what is still alive would make the pass long
            gc.collect()
        _TRIM(0)
        self.trims += 1
        log.debug("heap trimmed (%d held by clients) in %.1f ms", live, (time.perf_counter() - started) * 1000)
        return True


def freeze_startup() -> int:
    """Move everything alive now into the collector's permanent generation (``gc.freeze``), after
    one full pass: the process's modules, config, sockets and caches are never garbage, and the
    collector's passes (its own and each trim's) then only look at what came later.  Called once
    by a node process after it started (not by ``Node`` itself: tests run many nodes in one
    process).  Returns how many objects it froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
