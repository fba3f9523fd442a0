"""How a Redis-backed service reaches its Redis, and when a write counts as acknowledged.

Two ways in, chosen by settings (docs/operations.md, "Redis failover"):

- ``NYTH_REDIS_URL``: one Redis at a fixed address.
- ``NYTH_REDIS_SENTINELS`` + ``NYTH_REDIS_SENTINEL_SERVICE``: redis-py's own Sentinel
  client. Every new connection asks the sentinels where the primary is, and a connection
  that meets a demoted primary (READONLY) drops itself, so after a failover the service
  follows the new primary by itself. While there is none (the seconds of the switch) a
  command fails with a ConnectionError, which the routes answer as 503 + Retry-After.

With ``NYTH_REDIS_WAIT_REPLICAS`` = n > 0, a write that acknowledges something to a
client (a post) is followed by ``WAIT n timeout`` on the same connection, in the same
round trip; fewer than n replicas in time raises `NotReplicated` (answered 503), so a 201
means the write is on the primary and on n replicas, and survives the primary's death.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from nyth.config import OnionServiceSettings, parse_host_port

# A few quick retries ride out a Redis restart or a failover's last moments; beyond that
# the caller gets a 503 promptly instead of hanging (and may retry).
_RETRIES = 3
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0


class NotReplicated(RedisError):
    """The write is on the primary, but fewer replicas than required confirmed it in
    time: it must not be acknowledged. It may still be there later (or be lost with the
    primary); a retry stores it again."""

    def __init__(self, wanted: int, acknowledged: int, timeout_ms: int) -> None:
        super().__init__(f"only {acknowledged} of {wanted} replica(s) confirmed the write "
                         f"within {timeout_ms} ms")
        self.wanted = wanted
        self.acknowledged = acknowledged
        self.timeout_ms = timeout_ms


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must hold a write before it is acknowledged, and for how long
    to wait for them."""

    replicas: int
    timeout_ms: int

    @classmethod
    def from_settings(cls, settings: OnionServiceSettings) -> ReplicaWait | None:
        if settings.redis_wait_replicas == 0:
            return None
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)


def redis_client(settings: OnionServiceSettings) -> aioredis.Redis:
    """The service's Redis client: direct, or following the primary through Sentinel."""
    password = (settings.redis_password.get_secret_value()
                if settings.redis_password is not None else None)
    # WAIT blocks on the server for up to its timeout: the socket must outlast it, or a
    # slow replica would look like a dead primary.
    options: dict[str, Any] = dict(
        socket_timeout=_SOCKET_TIMEOUT + settings.redis_wait_timeout_ms / 1000,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        health_check_interval=15,
    )
    if not settings.redis_sentinels:
        if password is not None:
            options["password"] = password
        return aioredis.Redis.from_url(settings.redis_url, **options)
    assert settings.redis_sentinel_service is not None  # the settings require it
    sentinel_password = (settings.redis_sentinel_password.get_secret_value()
                         if settings.redis_sentinel_password is not None else None)
    sentinel = Sentinel(
        [parse_host_port(address) for address in settings.redis_sentinels],
        sentinel_kwargs={"socket_timeout": _CONNECT_TIMEOUT,
                         "socket_connect_timeout": _CONNECT_TIMEOUT,
                         "password": sentinel_password},
    )
    return sentinel.master_for(settings.redis_sentinel_service, db=settings.redis_db,
                               password=password, **options)


async def close_redis(client: aioredis.Redis) -> None:
    """Close the client and, for a Sentinel client, its connections to the sentinels."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel_client in getattr(manager, "sentinels", ()):
        await sentinel_client.aclose()


async def eval_acknowledged(client: aioredis.Redis, script: Any, lua: str, keys: Sequence[Any],
                            args: Sequence[Any], wait: ReplicaWait | None) -> Any:
    """Run a write script; with wait, return only once wait.replicas replicas hold it.

    script is the registered `redis.commands.core.AsyncScript` for lua (EVALSHA, one
    round trip) used when no replica has to confirm.
    """
    if wait is None:
        return await script(keys=list(keys), args=list(args))
    # WAIT counts the writes of its own connection only, so it must follow the write on
    # the same connection: one pipeline gives that, in one round trip. If the connection
    # breaks, redis-py retries the pair as a whole, never a WAIT alone (which, on a fresh
    # connection with no write, would confirm at once). Plain EVAL rather than EVALSHA: a
    # primary just promoted may not have the script cached yet.
    pipe = client.pipeline(transaction=False)
    pipe.eval(lua, len(keys), *keys, *args)
    pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
    result, acknowledged = await pipe.execute()
    if int(acknowledged) < wait.replicas:
        raise NotReplicated(wait.replicas, int(acknowledged), wait.timeout_ms)
    return result
