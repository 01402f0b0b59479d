"""Packet layer of the SFU node: parsing and in-buffer rewriting, no I/O, no asyncio.

Import from the modules themselves (this package re-exports nothing):

- ``demux``: first-byte classification of what arrives on the media port (RFC 7983);
- ``rtp``: headers, extensions, ``copy_rewrite``;
- ``rtcp``: compound RTCP, parsed into dataclasses and built back;
- ``seq``: wraparound arithmetic and the sequence and timestamp mungers;
- ``nack``: the receiver's loss tracker; ``rtx``: RFC 4588 retransmission packets;
- ``twcc``: transport-wide congestion control feedback (the header extension and the RTCP);
- ``codecs``, ``vp8``, ``vp9``: keyframes and the payload descriptors the mungers rewrite.
"""
