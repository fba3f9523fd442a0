"""Start a mailbox as a real process (tests, benchmarks, dev scripts)."""

from __future__ import annotations

from nyth.runtime.redis_service import RedisServiceProcess


class MailboxProcess(RedisServiceProcess):
    """``python -m nyth_mailbox`` on 127.0.0.1:port, with its base URL."""

    module = "nyth_mailbox"
    default_name = "mailbox"
    default_stream_key = "nyth:mailbox"
