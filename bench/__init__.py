"""Forwarding-throughput bench: traffic tools, a C and a bare-Python baseline, and the comparison harness.

Run ``python -m bench compare --help``.  Every workload here talks to 127.0.0.1 only and is bounded
in packet count and wall time.
"""
