"""The load generator: N rooms x P publishers x S subscribers over real ICE-lite/DTLS-SRTP sessions.

``python -m bench run SCENARIO.toml`` (see bench/README.md).  Layers: ``scenario`` (typed TOML),
``plan`` (sessions and streams of one step), ``wire`` (synthetic RTP and its verification),
``sessions`` (WHIP/WHEP through ``sfu.client.lite``), ``engine`` (one generator process's send and
receive loop), ``worker`` (that process), ``nodes`` (where tokens come from, node CPU/RSS),
``runner`` (steps, progress, results), ``report`` (table, JSON, plot).
"""
