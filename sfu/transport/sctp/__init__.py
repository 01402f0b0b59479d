"""SCTP over DTLS for WebRTC data channels (RFC 8261, RFC 8831, RFC 8832), sans-I/O.

``chunks`` and ``packet`` parse and build the wire format (``chunks`` re-exports the chunk classes
of ``control_chunks`` and ``data_chunks``, built on ``wire``); ``association`` is the state machine
(fed packets and ``now_ms``, it returns packets to send and events), a facade over ``common``,
``sender``, ``receiver``, ``reconfig`` and ``handshake``; ``dcep`` and ``channels`` put data
channels on top of it.
"""
