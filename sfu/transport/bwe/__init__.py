"""Send-side congestion control for one subscriber transport: pure sans-I/O units.

``estimator.SendSideBwe`` turns transport-cc feedback into an estimate (delay-based, in
``delay`` and ``aimd``, and loss-based, in ``loss``); ``pacer.Pacer`` spreads the transport's
packets at a rate derived from it; ``probe.ProbeController`` decides when to send a probe
cluster above the estimate and reads the cluster's feedback back into the estimator;
``sfu.routing.allocator.Allocator`` spends the estimate on the subscriber's tracks.  None of
them reads a clock or touches a socket: every call takes ``now_ms``.

Pacing in the node is ``sfu.transport.pacer.PacedQueue`` (a budget the send paths read inline,
``TransportSender.pacer``); ``pacer.Pacer`` here is the simulation's model of it and the home of
``ProbeCluster``.

Wiring (per subscriber transport; ``tests/sfu/transport/bwe/test_bwe_loop.py`` runs this loop
over a simulated bottleneck):

* forward path, per packet: ``pacer.enqueue(AUDIO | RTX | VIDEO, size, now, ref)`` with no
  transport-wide seq yet; audio: ``poll`` at once (it leaves in that call).
* pacer timer, at ``poll().next_ms`` (and on an enqueue into an idle pacer): for each item,
  stamp the next transport-wide seq when it is sent (the send history records seq, send time,
  size); ``padding_bytes``: send padding (RTX of recent packets, or padding-only) likewise; when
  ``probe_id`` is set, ``probes.on_probe_sent(probe_id, seq)`` for each of them.
  ``delay_ms`` feeds ``sfu_pacer_delay_seconds``; a growing ``dropped_video`` asks for a keyframe.
* RTCP, per transport-cc feedback: ``packets = history.on_transport_cc(...)``;
  ``bwe.on_feedback(packets, now)``; ``r = probes.on_feedback(packets, now)`` and, when not
  None, ``bwe.on_probe_result(r, now)``; then ``pacer.set_rate(bwe.estimate_bps)``.  RTT from
  receiver reports: ``bwe.set_rtt``.  Once a second: ``bwe.tick(now, sending)`` (no feedback
  for a second while sending lowers the estimate).
* allocation tick (about every 500 ms, and at once on a subscription, bound, pause or layer
  change, or when the estimate falls below what is allocated): ``a = allocator.allocate(
  bwe.estimate_bps, tracks, now)``; apply each ``TrackDecision`` (layer at its keyframe, asking
  for one when ``keyframe``; temporal filter; pause), count ``switch``/``reason``; then
  ``cluster = probes.want(bwe.estimate_bps, a.probe_target_bps, now)`` and, when not None,
  ``pacer.start_probe(cluster)``.
"""
