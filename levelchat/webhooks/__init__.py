"""Signed webhooks with a durable queue, shared by the node and the control plane.

``model`` (events, endpoints, settings), ``signing`` (the ``LevelChat-Signature`` header and its
verification), ``backoff`` (the retry schedule), ``queue`` (SQLite, WAL, written off the event
loop), ``dispatcher`` (one delivery loop per endpoint), ``metrics`` (Prometheus).
"""
