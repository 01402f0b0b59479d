"""The node's recordings: one recorder process each (``sfu.recording.process``), fed over a pipe.

Forwarding never waits on a recorder.  A recorded track's ``tap`` (``PublishedTrack.tap``, None
for a track not recorded) copies each clear packet into its recording's buffer (``sfu.recording.tap``,
preallocated); a timer hands the buffer to the recorder's stdin every
``FLUSH_INTERVAL_S`` while the pipe's backlog is under ``PIPE_BACKLOG_BYTES``.  A recorder that
falls behind leaves the buffer full and the taps drop packets and count them (``dropped``,
reported in the files' ``gaps``).  Packet losses upstream are repaired by the node's own NACKs
to the publisher (its retransmissions reach the tap); the recorder waits for them (up to 1 s) and
counts what never came.  One process per recording (not one per node): a failing writer (a full
disk, a crash) ends only its recording, and ``max_recordings`` bounds them.

Statuses: ``recording`` -> ``finishing`` (stopped, files being finished) -> ``completed`` or
``failed``.  A finished recording's description is kept in memory (the last ``KEEP_FINISHED``)
and in ``<dir>/<id>/recording.json``; the sweeper removes recordings older than the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from levelchat.errors import ApiError
from levelchat.usage.meter import RecordingMinutes
from sfu import clock
from sfu.packet.depacketize import codec_of
from sfu.recording.follow import LayerFollower
from sfu.recording.tap import TapBuffer
from sfu.recording.wire import MAX_LINE_BYTES, MAX_TRACKS, SR_BODY, Kind, encode, track_message
from sfu.routing.events import RoomEvent, RoomEventKind
from sfu.routing.simulcast import sources

if TYPE_CHECKING:
    from sfu.config import NodeConfig
    from sfu.routing.rooms import Room
    from sfu.routing.track import PublishedTrack

log = logging.getLogger(__name__)

PIPE_BACKLOG_BYTES = 4 << 20
FLUSH_INTERVAL_S = 0.02
FINISH_TIMEOUT_S = 120.0
KEEP_FINISHED = 1000
SWEEP_INTERVAL_S = 3600.0
RECORDING_ID = re.compile(r"RC_[0-9a-f]{16}")
FILE_NAME = re.compile(r"track[0-9]{1,3}-(audio|video)-[a-z0-9]{2,5}\.(webm|mkv)")

Emit = Callable[..., None]
RoomNotifier = Callable[[str, str, dict[str, Any]], None]


PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux fcntl


def _grow_pipe(stdin: asyncio.StreamWriter) -> None:
    """A 1 MiB pipe to the recorder (Linux; 64 KiB by default): fewer wake-ups per second of
    video.  Best effort: the default works, with more of them."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fd = stdin.transport.get_extra_info("pipe").fileno()
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


class RecordingStatus(enum.Enum):
    STARTING = "starting"
    RECORDING = "recording"
    FINISHING = "finishing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (RecordingStatus.COMPLETED, RecordingStatus.FAILED)


class Recording:
    def __init__(self, rec_id: str, room: Room, track_sids: frozenset[str] | None, directory: str) -> None:
        self.id = rec_id
        self.room_id = room.id
        self.room_sid = room.sid
        self.track_sids = track_sids  # None: every track, those published later included
        self.directory = directory
        self.status = RecordingStatus.STARTING
        self.started_at = time.time()
        self.error: str | None = None
        self.files: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.taps = TapBuffer()
        self.dropped = self.taps.dropped  # per track index: packets the taps could not buffer
        self.tracks: dict[str, tuple[int, PublishedTrack]] = {}  # source sid -> (index, layer recorded now)
        #: simulcast sources move to their best layer at its keyframe (sfu.recording.follow)
        self.follower = LayerFollower(self.tracks, self.switch_layer)
        self._sr_sent: dict[int, tuple[int, int, int] | None] = {}
        self.ready: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []

    # -- node side ------------------------------------------------------------------------------
    def put(self, data: bytes) -> None:
        """A control frame (track, sender report, end), after the packets already buffered."""
        if not self.taps.put(data):
            self.flush(force=True)
            self.taps.put(data)

    def flush(self, *, force: bool = False) -> None:
        proc = self.proc
        if not self.taps.fill or proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        transport = proc.stdin.transport
        if not force and transport.get_write_buffer_size() >= PIPE_BACKLOG_BYTES:
            return  # the recorder is behind: the buffer fills up and the taps drop
        proc.stdin.write(self.taps.take())

    def attach(self, source: PublishedTrack, now_ms: int) -> bool:
        """Record ``source`` (a track, or a simulcast group's primary: its highest layer sending
        now is recorded, under the source's id, for the whole recording)."""
        track = source.group.choose(None) if source.group is not None else source
        if source.sid in self.tracks or len(self.tracks) >= MAX_TRACKS or track.tap is not None:
            return False
        if codec_of(track.codec.name) is None:
            return False
        index = len(self.tracks)
        self.tracks[source.sid] = (index, track)
        spec = {"sid": source.sid, "kind": track.kind, "codec": track.codec.name, "clock_rate": track.codec.clock_rate}
        if track.rid is not None:
            spec["rid"] = track.rid
        self.put(track_message(index, spec))
        self._sr_sent[index] = None
        self.send_reports()
        track.tap = self.taps.make_tap(index)
        if track.is_video:
            track.request_keyframe(now_ms, wait=False)  # the recording starts at a keyframe
        return True

    def switch_layer(self, sid: str, layer: PublishedTrack, now_ms: int) -> None:
        """Record ``layer`` for source ``sid`` from the packet being tapped (its keyframe's first):
        the recorder starts a new segment of the track's file (``Kind.LAYER``), and gets the
        layer's sender report (its RTP time on the publisher's clock) before the layer's packets."""
        index, old = self.tracks[sid]
        old.tap = None
        self.tracks[sid] = (index, layer)
        self.put(encode(Kind.LAYER, index, now_ms, json.dumps({"rid": layer.rid}).encode()))
        self._sr_sent[index] = None
        self.send_reports()
        layer.tap = self.taps.make_tap(index)

    def detach_all(self) -> None:
        self.follower.detach()
        for _index, track in self.tracks.values():
            track.tap = None

    def send_reports(self) -> None:
        """Each track's newest sender report, when it changed (they map RTP time to NTP)."""
        for index, track in self.tracks.values():
            sr = track.last_sr
            if sr is not None and sr != self._sr_sent.get(index):
                self._sr_sent[index] = sr
                self.put(encode(Kind.SR, index, 0, SR_BODY.pack(sr[0] & 0xFFFFFFFFFFFFFFFF, sr[1] & 0xFFFFFFFF)))

    def track_by_index(self, index: int) -> PublishedTrack | None:
        for i, track in self.tracks.values():
            if i == index:
                return track
        return None

    def describe(self) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.id, "room": self.room_id, "status": self.status.value}
        if self.status.final:
            view["files"] = self.files
        if self.error is not None:
            view["error"] = {"code": "recording/backend-failed", "detail": self.error}
        return view

    def webhook_view(self) -> dict[str, Any]:
        view = self.describe()
        view.pop("files", None)
        if self.status.final:
            view["files"] = [{k: f.get(k) for k in ("name", "track", "kind", "codec", "duration_s", "bytes")} for f in self.files]
        return view


class RecordingManager:
    def __init__(self, config: NodeConfig, emit: Emit) -> None:
        self.config = config
        self.emit = emit  # NodeWebhooks.emit
        self.root = config.recordings_path
        self.active: dict[str, Recording] = {}
        self.finished: OrderedDict[str, Recording] = OrderedDict()
        self.room_notifiers: list[RoomNotifier] = []
        #: recordings that ended, by final status; packets the taps dropped in finished recordings
        self.outcomes = {"completed": 0, "failed": 0}
        self._dropped_finished = 0
        self._sweeper: asyncio.Task[None] | None = None
        #: each finished recording's span counts in the node's usage (``sfu.api.usage.NodeUsage``)
        self.usage: RecordingMinutes | None = None

    def _room_view(self, rec: Recording) -> dict[str, Any]:
        return {"name": rec.room_id, "sid": rec.room_sid}

    def _tell_room(self, rec: Recording) -> None:
        params = {"recording": rec.id, "status": rec.status.value}
        if rec.error is not None:
            params["code"] = "recording/backend-failed"
            params["detail"] = rec.error
        for notify in self.room_notifiers:
            notify(rec.room_id, "recording", params)

    # -- start / stop --------------------------------------------------------------------------
    async def start(self, room: Room, track_sids: list[str] | None) -> Recording:
        if any(r.room_id == room.id for r in self.active.values()):
            raise ApiError("conflict", f"room {room.id!r} is already being recorded")
        if len(self.active) >= self.config.max_recordings:
            raise ApiError("service_unavailable", f"this node records at most {self.config.max_recordings} rooms at once")
        published = {t.sid: t for p in room.participants.values() for t in sources(p.tracks.values())}
        if track_sids is not None:
            unknown = [sid for sid in track_sids if sid not in published]
            if unknown:
                raise ApiError("not_found", f"no track {unknown[0][:64]!r} in room {room.id!r}")
        rec_id = "RC_" + secrets.token_hex(8)
        rec = Recording(rec_id, room, frozenset(track_sids) if track_sids is not None else None, os.path.join(self.root, rec_id))
        self.active[rec_id] = rec
        try:
            rec.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sfu.recording.process", "--dir", rec.directory,
                "--max-bytes", str(self.config.recording_max_bytes),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_LINE_BYTES,
            )  # fmt: skip
        except OSError as exc:
            self._failed(rec, f"the recorder process could not start: {exc}")
            raise ApiError("recording/backend-failed", rec.error or "", status=400) from None
        if rec.proc.stdin is not None:
            _grow_pipe(rec.proc.stdin)
        rec.tasks.append(asyncio.create_task(self._read(rec)))
        try:
            problem = await asyncio.wait_for(asyncio.shield(rec.ready), self.config.recording_start_timeout_s)
        except TimeoutError:
            problem = "the recorder did not start in time"
            with contextlib.suppress(ProcessLookupError):
                rec.proc.kill()
        if problem is not None:
            self._failed(rec, problem)
            raise ApiError("recording/backend-failed", problem, status=400)
        rec.status = RecordingStatus.RECORDING
        now = clock.now_ms()
        for track in published.values():
            if rec.track_sids is None or track.sid in rec.track_sids:
                rec.attach(track, now)
        rec.tasks.append(asyncio.create_task(self._pump(rec)))
        self.emit("recording_started", room=self._room_view(rec), recording=rec.webhook_view())
        self._tell_room(rec)
        log.info("recording %s of room %s started: %d track(s) in %s", rec.id, room.id, len(rec.tracks), rec.directory)
        return rec

    def stop(self, rec: Recording) -> None:
        """Stop taking packets; the recorder finishes the files (``finishing``, then final)."""
        if rec.status is not RecordingStatus.RECORDING:
            return
        rec.status = RecordingStatus.FINISHING
        rec.detach_all()
        rec.send_reports()
        rec.put(encode(Kind.END, 0, 0, b""))
        rec.flush(force=True)
        proc = rec.proc
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        self._tell_room(rec)

    async def _pump(self, rec: Recording) -> None:
        while rec.status is RecordingStatus.RECORDING:
            rec.follower.tick(clock.now_ms())
            rec.send_reports()
            rec.flush()
            await asyncio.sleep(FLUSH_INTERVAL_S)

    async def _read(self, rec: Recording) -> None:
        proc = rec.proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:  # a line over the limit
                    break
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self._on_message(rec, msg if isinstance(msg, dict) else {})
            try:
                code = await asyncio.wait_for(proc.wait(), FINISH_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                code = await proc.wait()
            if not rec.ready.done():
                rec.ready.set_result(f"the recorder exited with status {code}")
            if not rec.status.final:
                self._failed(rec, f"the recorder exited with status {code} before finishing")
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    def _on_message(self, rec: Recording, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "ready" and not rec.ready.done():
            rec.ready.set_result(None)
        elif event == "pli" and isinstance(msg.get("track"), int):
            track = rec.track_by_index(msg["track"])
            if track is not None and track.tap is not None:
                track.request_keyframe(clock.now_ms(), wait=False)
        elif event == "limit":
            log.info("recording %s of room %s: %s; stopping", rec.id, rec.room_id, msg.get("detail"))
            self.stop(rec)
        elif event == "failed":
            detail = str(msg.get("detail", "the recorder failed"))[:500]
            if not rec.ready.done():
                rec.ready.set_result(detail)
                return
            self._failed(rec, detail, msg.get("files"))
        elif event == "completed":
            rec.files = self._files(rec, msg.get("files"))
            self._final(rec, RecordingStatus.COMPLETED)
            self.emit("recording.completed", room=self._room_view(rec), recording=rec.webhook_view())

    def _files(self, rec: Recording, reported: Any) -> list[dict[str, Any]]:
        files = [f for f in reported if isinstance(f, dict) and f.get("name")] if isinstance(reported, list) else []
        starts = [f["started_at"] for f in files if isinstance(f.get("started_at"), (int, float))]
        origin = min(starts) if starts else None
        for f in files:
            index = rec.tracks.get(str(f.get("track")), (-1, None))[0]
            gaps = f.setdefault("gaps", {})
            if isinstance(gaps, dict):
                gaps["packets_dropped"] = rec.dropped[index] if index >= 0 else 0
            started = f.get("started_at")
            f["offset_s"] = round(started - origin, 3) if origin is not None and isinstance(started, (int, float)) else None
        return files

    def _failed(self, rec: Recording, detail: str, files: Any = None) -> None:
        if rec.status.final:
            return
        rec.detach_all()
        rec.error = detail
        rec.files = self._files(rec, files)
        self._final(rec, RecordingStatus.FAILED)
        log.warning("recording %s of room %s failed: %s", rec.id, rec.room_id, detail)
        self.emit("recording.failed", room=self._room_view(rec), recording=rec.webhook_view())
        self._tell_room(rec)

    def packets_dropped(self) -> int:
        """Packets the taps dropped (a recorder behind), over all recordings, for ``/metrics``."""
        return self._dropped_finished + sum(sum(r.dropped) for r in self.active.values())

    def _final(self, rec: Recording, status: RecordingStatus) -> None:
        if self.usage is not None and not rec.status.final:
            self.usage.add_recording(int(rec.started_at * 1000), int(time.time() * 1000))
        rec.status = status
        self.outcomes[status.value] += 1
        self._dropped_finished += sum(rec.dropped)
        self.active.pop(rec.id, None)
        self.finished[rec.id] = rec
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)
        with contextlib.suppress(OSError):
            with open(os.path.join(rec.directory, "recording.json"), "w") as f:
                json.dump(rec.describe(), f)

    # -- lookups -----------------------------------------------------------------------------------
    def get(self, rec_id: str) -> dict[str, Any] | None:
        """A recording's description (live, kept, or from its directory), None when unknown."""
        if not RECORDING_ID.fullmatch(rec_id):
            return None
        rec = self.active.get(rec_id) or self.finished.get(rec_id)
        if rec is not None:
            return rec.describe()
        try:
            with open(os.path.join(self.root, rec_id, "recording.json")) as f:
                view = json.load(f)
        except (OSError, ValueError):
            return None
        return view if isinstance(view, dict) and view.get("id") == rec_id else None

    def file_path(self, rec_id: str, name: str) -> str | None:
        view = self.get(rec_id)
        if view is None or not FILE_NAME.fullmatch(name):
            return None
        if not any(isinstance(f, dict) and f.get("name") == name for f in view.get("files") or ()):
            return None
        return os.path.join(self.root, rec_id, name)

    def live(self, rec_id: str) -> Recording | None:
        return self.active.get(rec_id)

    # -- the room's events, the node's life ------------------------------------------------------
    def on_event(self, event: RoomEvent) -> None:
        recs = [r for r in self.active.values() if r.room_id == event.room.id and r.status is RecordingStatus.RECORDING]
        if not recs:
            return
        if event.kind is RoomEventKind.ROOM_CLOSED:
            for rec in recs:
                self.stop(rec)
        elif event.kind is RoomEventKind.PUBLISHED:
            now = clock.now_ms()
            for rec in recs:
                for track in sources(event.tracks):
                    if rec.track_sids is None or track.sid in rec.track_sids:
                        rec.attach(track, now)

    def start_sweeper(self) -> None:
        if self._sweeper is None and self.config.recording_retention_days > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.sweep, time.time())
            await asyncio.sleep(SWEEP_INTERVAL_S)

    def sweep(self, now_s: float) -> int:
        """Remove the recordings whose newest file is older than the retention; how many."""
        cutoff = now_s - self.config.recording_retention_days * 86400
        removed = 0
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0
        for name in names:
            path = os.path.join(self.root, name)
            if not RECORDING_ID.fullmatch(name) or name in self.active or not os.path.isdir(path):
                continue
            try:
                newest = max([os.path.getmtime(path)] + [os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)])
            except OSError:
                continue
            if newest < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                self.finished.pop(name, None)
                removed += 1
        return removed

    async def close(self) -> None:
        for rec in list(self.active.values()):
            self.stop(rec)
        tasks = [t for rec in list(self.active.values()) + list(self.finished.values()) for t in rec.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
