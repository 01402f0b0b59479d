"""The Data Channel Establishment Protocol (RFC 8832) and the PPIDs of RFC 8831."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from struct import Struct

_OPEN = Struct("!BBHIHH")


class Ppid(enum.IntEnum):
    DCEP = 50
    STRING = 51
    BINARY_PARTIAL = 52  # deprecated
    BINARY = 53
    STRING_PARTIAL = 54  # deprecated
    STRING_EMPTY = 56
    BINARY_EMPTY = 57


class MessageType(enum.IntEnum):
    ACK = 0x02
    OPEN = 0x03


class ChannelType(enum.IntEnum):
    RELIABLE = 0x00
    RELIABLE_UNORDERED = 0x80
    PARTIAL_RELIABLE_REXMIT = 0x01
    PARTIAL_RELIABLE_REXMIT_UNORDERED = 0x81
    PARTIAL_RELIABLE_TIMED = 0x02
    PARTIAL_RELIABLE_TIMED_UNORDERED = 0x82


@dataclass(frozen=True)
class DataChannelOpen:
    channel_type: ChannelType
    priority: int
    reliability: int  # retransmissions, or lifetime in ms, per the type
    label: str
    protocol: str = ""

    @classmethod
    def parse(cls, data: bytes) -> DataChannelOpen:
        if len(data) < _OPEN.size:
            raise ValueError(f"DATA_CHANNEL_OPEN: {len(data)} bytes is shorter than 12")
        mtype, ctype, priority, reliability, label_len, proto_len = _OPEN.unpack_from(data)
        if mtype != MessageType.OPEN:
            raise ValueError(f"DATA_CHANNEL_OPEN: message type {mtype}")
        try:
            channel_type = ChannelType(ctype)
        except ValueError:
            raise ValueError(f"DATA_CHANNEL_OPEN: unknown channel type {ctype:#x}") from None
        if len(data) != _OPEN.size + label_len + proto_len:
            raise ValueError(
                f"DATA_CHANNEL_OPEN: label ({label_len}) and protocol ({proto_len}) do not fill {len(data) - _OPEN.size} bytes"
            )
        try:
            label = data[12 : 12 + label_len].decode()
            protocol = data[12 + label_len :].decode()
        except UnicodeDecodeError:
            raise ValueError("DATA_CHANNEL_OPEN: label or protocol is not UTF-8") from None
        return cls(channel_type, priority, reliability, label, protocol)

    def __bytes__(self) -> bytes:
        label, protocol = self.label.encode(), self.protocol.encode()
        head = _OPEN.pack(MessageType.OPEN, self.channel_type, self.priority, self.reliability, len(label), len(protocol))
        return head + label + protocol

    @property
    def ordered(self) -> bool:
        return not self.channel_type & 0x80

    @property
    def max_retransmits(self) -> int | None:
        return self.reliability if self.channel_type & 0x7F == 0x01 else None

    @property
    def lifetime_ms(self) -> int | None:
        return self.reliability if self.channel_type & 0x7F == 0x02 else None

    @classmethod
    def of(
        cls, label: str, *, ordered: bool = True, max_retransmits: int | None = None, lifetime_ms: int | None = None, protocol: str = ""
    ) -> DataChannelOpen:
        if max_retransmits is not None and lifetime_ms is not None:
            raise ValueError("max_retransmits and lifetime_ms: set at most one")
        base, reliability = 0x00, 0
        if max_retransmits is not None:
            base, reliability = 0x01, max_retransmits
        elif lifetime_ms is not None:
            base, reliability = 0x02, lifetime_ms
        return cls(ChannelType(base | (0 if ordered else 0x80)), 0, reliability, label, protocol)


ACK_BYTES = bytes([MessageType.ACK])


def is_ack(data: bytes) -> bool:
    return data == ACK_BYTES
