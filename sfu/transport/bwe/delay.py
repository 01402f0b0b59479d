"""Delay-based congestion detection (draft-ietf-rmcat-gcc-02 §5, in the trendline form).

``InterArrival`` groups packets sent within ``GROUP_MS`` of each other (a frame or a paced
burst) and yields, per completed group, how much later it arrived than the previous group
relative to how much later it was sent.  ``Trendline`` accumulates those delay variations,
smooths them and fits a line over the last ``WINDOW`` groups: a positive slope means the
bottleneck queue is growing.  ``OveruseDetector`` compares the (scaled) slope with a threshold
that adapts to the path (k_up / k_down, clamped), so that a competing TCP flow or jittery
Wi-Fi does not starve the estimate.
"""

from __future__ import annotations

from collections import deque

from sfu.transport.bwe.feedback import BweState

#: packets sent within this many ms of a group's first packet belong to the group
GROUP_MS = 5.0
#: a packet arriving within this many ms of the previous one, ahead of its send spacing, is
#: part of the same burst (released together by a queue on the path)
BURST_MS = 5.0
#: a jump in arrival time this large (feedback gap, receiver clock change) restarts grouping
RESET_MS = 3000.0
#: groups in the trendline's regression window
WINDOW = 20
SMOOTHING = 0.9
#: the slope is scaled by min(groups seen, DELTA_CAP) x GAIN before it meets the threshold
GAIN = 4.0
DELTA_CAP = 60
THRESHOLD_INIT_MS = 12.5
THRESHOLD_MIN_MS = 6.0
THRESHOLD_MAX_MS = 600.0
K_UP = 0.0087
K_DOWN = 0.039
#: a trend this far beyond the threshold is a spike: it does not move the threshold
MAX_ADAPT_OFFSET_MS = 15.0
#: overuse must last this long (and over two groups) before it is signalled
OVERUSE_TIME_MS = 10.0


class InterArrival:
    """Send-time groups and their deltas.  ``add`` returns (send delta, arrival delta, arrival
    of the group) when the packet completes the previous group, else None."""

    __slots__ = ("_first_send", "_last_send", "_first_recv", "_last_recv", "_prev_send", "_prev_recv")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._first_send = -1.0  # current group; -1: none yet
        self._last_send = 0.0
        self._first_recv = 0.0
        self._last_recv = 0.0
        self._prev_send = -1.0  # previous completed group; -1: none yet
        self._prev_recv = 0.0

    def add(self, send_ms: float, recv_ms: float) -> tuple[float, float, float] | None:
        if self._first_send < 0:
            self._start(send_ms, recv_ms)
            return None
        if send_ms < self._first_send:
            return None  # reordered: older than the group in progress, already accounted for
        if abs(recv_ms - self._last_recv) > RESET_MS:
            self.reset()
            self._start(send_ms, recv_ms)
            return None
        if send_ms - self._first_send <= GROUP_MS or self._in_burst(send_ms, recv_ms):
            if send_ms > self._last_send:
                self._last_send = send_ms
            if recv_ms > self._last_recv:
                self._last_recv = recv_ms
            return None
        out: tuple[float, float, float] | None = None
        if self._prev_send >= 0:
            out = (self._last_send - self._prev_send, self._last_recv - self._prev_recv, self._last_recv)
        self._prev_send = self._last_send
        self._prev_recv = self._last_recv
        self._start(send_ms, recv_ms)
        return out

    def _start(self, send_ms: float, recv_ms: float) -> None:
        self._first_send = self._last_send = send_ms
        self._first_recv = self._last_recv = recv_ms

    def _in_burst(self, send_ms: float, recv_ms: float) -> bool:
        recv_delta = recv_ms - self._last_recv
        return 0.0 <= recv_delta < BURST_MS and recv_delta - (send_ms - self._last_send) < 0


class Trendline:
    """Slope of the smoothed accumulated delay variation over the last ``WINDOW`` groups."""

    __slots__ = ("_acc", "_smoothed", "_first_recv", "_points", "_groups")

    def __init__(self) -> None:
        self._acc = 0.0
        self._smoothed = 0.0
        self._first_recv = -1.0
        self._points: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._groups = 0

    def update(self, send_delta: float, recv_delta: float, recv_ms: float) -> float | None:
        """Add one group; the scaled trend (ms) once the window is full, else None."""
        if self._first_recv < 0:
            self._first_recv = recv_ms
        self._groups += 1
        self._acc += recv_delta - send_delta
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._acc
        self._points.append((recv_ms - self._first_recv, self._smoothed))
        if len(self._points) < WINDOW:
            return None
        return _slope(self._points) * min(self._groups, DELTA_CAP) * GAIN


def _slope(points: deque[tuple[float, float]]) -> float:
    n = len(points)
    x0, y0 = points[0]  # centred: hours of arrival time do not eat the precision
    sx = sy = sxx = sxy = 0.0
    for px, py in points:
        x = px - x0
        y = py - y0
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    den = n * sxx - sx * sx
    return (n * sxy - sx * sy) / den if den > 0 else 0.0


class OveruseDetector:
    """Trend against an adaptive threshold -> normal / overusing / underusing."""

    __slots__ = ("threshold", "state", "_last_ms", "_over_ms", "_over_count", "_prev_trend")

    def __init__(self) -> None:
        self.threshold = THRESHOLD_INIT_MS
        self.state = BweState.NORMAL
        self._last_ms = -1.0
        self._over_ms = -1.0
        self._over_count = 0
        self._prev_trend = 0.0

    def detect(self, trend: float, send_delta: float, now_ms: float) -> BweState:
        if trend > self.threshold:
            self._over_ms = send_delta / 2 if self._over_ms < 0 else self._over_ms + send_delta
            self._over_count += 1
            if self._over_ms > OVERUSE_TIME_MS and self._over_count > 1 and trend >= self._prev_trend:
                self._over_ms = 0.0
                self._over_count = 0
                self.state = BweState.OVERUSING
        elif trend < -self.threshold:
            self._over_ms = -1.0
            self._over_count = 0
            self.state = BweState.UNDERUSING
        else:
            self._over_ms = -1.0
            self._over_count = 0
            self.state = BweState.NORMAL
        self._prev_trend = trend
        self._adapt(trend, now_ms)
        return self.state

    def _adapt(self, trend: float, now_ms: float) -> None:
        if self._last_ms < 0:
            self._last_ms = now_ms
        magnitude = abs(trend)
        if magnitude > self.threshold + MAX_ADAPT_OFFSET_MS:
            self._last_ms = now_ms
            return
        k = K_DOWN if magnitude < self.threshold else K_UP
        dt = min(now_ms - self._last_ms, 100.0)
        self.threshold += k * (magnitude - self.threshold) * dt
        self.threshold = min(max(self.threshold, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        self._last_ms = now_ms
