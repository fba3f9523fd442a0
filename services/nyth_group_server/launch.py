"""Start a group server as a real process (tests, benchmarks, dev scripts)."""

from __future__ import annotations

from nyth.runtime.redis_service import RedisServiceProcess


class GroupServerProcess(RedisServiceProcess):
    """``python -m nyth_group_server`` on 127.0.0.1:port, with its base URL."""

    module = "nyth_group_server"
    default_name = "group-server"
    default_stream_key = "nyth:group"
