"""Send-side congestion control for one subscriber transport: pure sans-I/O units.

``estimator.SendSideBwe`` turns transport-cc feedback into an estimate (delay-based, in
``delay`` and ``aimd``, and loss-based, in ``loss``); ``pacer.Pacer`` spreads the transport's
packets at a rate derived from it; ``probe.ProbeController`` decides when to send a probe
cluster above the estimate and reads the cluster's feedback back into the estimator.  None of
them reads a clock or touches a socket: every call takes ``now_ms``.
"""
