"""The recorder process: ``python -m sfu.recording.process --dir DIR --max-bytes N``.

One per recording, started by the node (``sfu.recording.manager``): it reads the recorded
tracks' packets from stdin (``sfu.recording.wire``), writes one file per track into ``DIR``
(``sfu.recording.writer``) and reports on stdout.  Its own process: the disk, the muxer and a
crash never stall the node's forwarding.  It checks at start that ``DIR`` can be written (a
``failed`` report and exit 1 when not), and exits when told ``END`` or when stdin closes (the
node is gone: the files are finished all the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sfu.recording.wire import SR_BODY, Kind, Reader
from sfu.recording.writer import TrackWriter, WriteFailed

READ_BYTES = 1 << 16


def _say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _probe(directory: str) -> None:
    """The directory exists (made if need be) and takes a file: OSError when not."""
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, ".probe")
    with open(probe, "wb") as f:
        f.write(b"levelchat")
        f.flush()
        os.fsync(f.fileno())
    os.unlink(probe)


def run(directory: str, max_bytes: int) -> int:
    try:
        _probe(directory)
    except OSError as exc:
        _say("failed", detail=f"cannot write in the recordings directory: {exc.strerror or exc}")
        return 1
    _say("ready")
    writers: dict[int, TrackWriter] = {}
    budget = [max_bytes]
    reader = Reader()
    ignored = 0
    limited = False
    try:
        done = False
        while not done:
            data = os.read(0, READ_BYTES)
            if not data:
                break
            for msg in reader.feed(data):
                w = writers.get(msg.track)
                if msg.kind is Kind.RTP:
                    if w is not None and w.on_rtp(msg.body, msg.arrival_ms, budget):
                        _say("pli", track=msg.track)
                    elif w is None:
                        ignored += 1
                    if w is not None and w.truncated and not limited:
                        limited = True  # the size limit: the node ends the recording
                        _say("limit", detail=f"the recording reached {max_bytes} bytes")
                elif msg.kind is Kind.SR:
                    if w is not None and len(msg.body) == SR_BODY.size:
                        w.on_sr(*SR_BODY.unpack(msg.body))
                elif msg.kind is Kind.TRACK:
                    if msg.track not in writers:
                        try:
                            writers[msg.track] = TrackWriter(directory, msg.track, json.loads(msg.body))
                        except ValueError:
                            ignored += 1
                elif msg.kind is Kind.LAYER:
                    if w is not None:
                        w.on_layer(msg.body, msg.arrival_ms, budget)
                elif msg.kind is Kind.END:
                    done = True
                    break
        for w in writers.values():
            w.finish(budget)
    except WriteFailed as exc:
        _say("failed", detail=str(exc), files=[w.describe() for w in writers.values()])
        return 1
    except ValueError as exc:  # a frame the node would never send
        _say("failed", detail=f"bad input from the node: {exc}", files=[w.describe() for w in writers.values()])
        return 1
    _say("completed", files=[w.describe() for w in writers.values()], ignored=ignored)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sfu.recording.process")
    p.add_argument("--dir", required=True)
    p.add_argument("--max-bytes", type=int, required=True)
    args = p.parse_args(argv)
    return run(args.dir, args.max_bytes)


if __name__ == "__main__":
    sys.exit(main())
