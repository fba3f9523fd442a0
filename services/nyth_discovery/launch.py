"""Start a discovery index as a real process (tests, benchmarks, dev scripts)."""

from __future__ import annotations

from nyth.runtime.redis_service import RedisServiceProcess


class DiscoveryProcess(RedisServiceProcess):
    """``python -m nyth_discovery`` on 127.0.0.1:port, with its base URL."""

    module = "nyth_discovery"
    default_name = "discovery"
    default_stream_key = "nyth:discovery"
