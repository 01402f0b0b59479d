"""Give freed heap back to the system after a burst of what clients hold has ended.

glibc keeps what ``free`` returns in its arenas; after a burst ends (a thousand sessions that
never completed ICE timing out together, a room of hundreds closing, thousands of idle WebSockets
closed at their join deadline) the node's RSS would stay at its peak although the memory is free.
``HeapTrimmer.observe(held, now_ms)`` is told once a housekeeping tick how much clients make the
node hold (participants and open HTTP connections: ``Node.held_by_clients``).  When that fell by
``threshold`` or more from its peak since the last trim, it trims: glibc's ``malloc_trim(0)``, a
few milliseconds, at most once per ``min_interval_ms``.  What a burst frees comes in over seconds
(connections closing in turn, rooms emptying after their timeout), so each trim is followed by
another ``min_interval_ms`` later, for as long as the last one gave back at least
``follow_up_bytes`` (RSS before and after), up to ``max_follow_ups``.  A follow-up (the burst is
over by then) first runs the collector's full pass, which also empties CPython's free lists of
tuples, lists, dicts and floats: their blocks pin heap pages the trim could otherwise return (20
MiB of 28 after 2,000 idle WebSockets).  The node freezes what it made at start-up
(``sfu.gcpolicy``), so that pass only looks at what came later (1-2 ms against 70 ms with 66,000
start-up objects).  Where there is no glibc (musl, other systems) it does nothing.

How much of what Python frees reaches ``free`` depends on its allocator: pymalloc keeps a 1 MiB
arena while any object in it lives, so after a burst most arenas stay, pinned by a few
long-lived objects; with ``PYTHONMALLOC=malloc`` (the Docker image and the systemd units set it)
every object is glibc's and the trims return nearly all (``docs/operations.md``, "Memory after
bursts").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: what clients held, released since the last trim's peak, that is worth trimming for
TRIM_THRESHOLD = 32
TRIM_MIN_INTERVAL_MS = 5_000
#: a trim that gave back this much is followed by another (more may have been freed since)
FOLLOW_UP_BYTES = 1 << 20
MAX_FOLLOW_UPS = 6


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``), 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    def __init__(
        self,
        threshold: int = TRIM_THRESHOLD,
        min_interval_ms: int = TRIM_MIN_INTERVAL_MS,
        *,
        follow_up_bytes: int = FOLLOW_UP_BYTES,
        max_follow_ups: int = MAX_FOLLOW_UPS,
        trim: Callable[[], object] | None = _malloc_trim(),  # noqa: B008 (once, at import)
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        self.threshold = threshold
        self.min_interval_ms = min_interval_ms
        self.follow_up_bytes = follow_up_bytes
        self.max_follow_ups = max_follow_ups
        self._trim = trim
        self._rss = rss
        self.peak = 0
        self.trims = 0
        #: bytes of RSS the trims gave back, in all
        self.returned = 0
        self._last_ms: int | None = None
        #: follow-ups still allowed after the last trim (0: none due)
        self._follow_ups = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def observe(self, held: int, now_ms: int) -> bool:
        """``held``: what clients hold now; True when it trimmed the heap."""
        if held > self.peak:
            self.peak = held
        dropped = self.peak - held >= self.threshold
        if not dropped and not self._follow_ups:
            return False
        if self._last_ms is not None and now_ms - self._last_ms < self.min_interval_ms:
            return False
        follow_up = not dropped
        self.peak = held
        self._last_ms = now_ms
        if self._trim is None:
            self._follow_ups = 0
            return False
        started = time.perf_counter()
        before = self._rss()
        if follow_up:  # not mid-burst, while what is still alive would make the pass long
            gc.collect()
        self._trim()
        returned = max(0, before - self._rss())
        self.trims += 1
        self.returned += returned
        if dropped:
            self._follow_ups = self.max_follow_ups
        elif returned >= self.follow_up_bytes:
            self._follow_ups -= 1
        else:
            self._follow_ups = 0
        log.debug("heap trimmed (%d held by clients): %.1f MiB back in %.1f ms", held, returned / (1 << 20),
                  (time.perf_counter() - started) * 1000)
        return True

