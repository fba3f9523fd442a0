"""What the Redis-backed onion services (group server, mailbox) do alike inside their app:
unseal the onion key and re-use or issue the signed bundle, hold Redis, background tasks
and the onion publisher, answer /healthz, and ration Server-Sent Events streams.

Each service subclasses `OnionService` for its running state and keeps its own routes,
store and bundle fields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Protocol, Self, TypeVar

import anyio
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Gauge
from pydantic import AfterValidator, BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from nyth.config import OnionServiceSettings
from nyth.errors import AuthenticationError
from nyth.keystore import creation_lock, load_or_create_identity, write_private_file
from nyth.proto.identity import Identity
from nyth.runtime.redis_link import NotReplicated, close_redis
from nyth.runtime.redis_link import redis_client as redis_client  # the services import it here
from nyth.runtime.stream_store import Cursor, RetainedStream
from nyth.runtime.tasks import cancel_and_wait
from nyth.web import error_json, error_responses

SettingsT = TypeVar("SettingsT", bound=OnionServiceSettings)


def check_cursor(value: str) -> str:
    Cursor.parse(value)  # DecodeError is a ValueError: pydantic reports its message
    return value


def _check_optional_cursor(value: str | None) -> str | None:
    return None if value is None else check_cursor(value)


LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", max_length=40,
           description="Resume after this cursor (sent by EventSource on reconnect)"),
    AfterValidator(_check_optional_cursor),
]


def event_stream_responses() -> dict[int | str, dict[str, Any]]:
    """What an SSE route answers, for its OpenAPI `responses`."""
    return {
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "An endless event stream"},
        **error_responses(422, 503),
    }


# No docstring: pydantic would put it into every service's OpenAPI document.
class Health(BaseModel):
    status: str = Field(description='"ok" or "unavailable".')
    onion: str
    redis: str = Field(description='"ok" or why Redis cannot be used.')
    onion_published: bool | None = Field(
        description="Whether the onion service is published; null when no tor is configured."
    )
    onion_state: str | None = None
    onion_reason: str | None = None
    reason: str | None = Field(None, description="Why the service is unavailable.")


class SignedBundle(Protocol):
    """A service's key bundle (`ServerBundle`, `MailboxBundle`): a dataclass whose fields
    other than issued_at are the limits it promises."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def sign(self, identity: Identity) -> bytes: ...

    @classmethod
    def verify(cls, data: bytes, onion: str | None = None) -> Self: ...


def load_or_issue_bundle(path: Path, identity: Identity, wanted: SignedBundle,
                         log: logging.Logger) -> bytes:
    """The signed bundle at path while it promises what wanted does (issued_at aside);
    otherwise wanted, signed and written there.

    Clients pin the exact bytes: re-signing with a fresh issued_at on every restart
    would look like a key change to every one of them. Replicas sharing the data dir
    therefore also share the bundle: the first one to start issues it, under the lock.
    """
    with creation_lock(path.parent):
        return _load_or_issue_bundle(path, identity, wanted, log)


def _load_or_issue_bundle(path: Path, identity: Identity, wanted: SignedBundle,
                          log: logging.Logger) -> bytes:
    if path.exists():
        try:
            data = path.read_bytes()
            old = type(wanted).verify(data, identity.onion)
        except (OSError, ValueError, AuthenticationError) as exc:
            log.warning("ignoring unreadable bundle at %s: %s", path, exc)
        else:
            changes = [f"{f.name} {getattr(old, f.name)}->{getattr(wanted, f.name)}"
                       for f in fields(wanted)
                       if f.name != "issued_at" and getattr(old, f.name) != getattr(wanted, f.name)]
            if not changes:
                return data
            log.warning("limits changed (%s): issuing a new bundle; clients that pinned the old "
                        "one refuse it until their users review and re-pin it "
                        "(nyth server repin %s)", ", ".join(changes), identity.onion)
    data = wanted.sign(identity)
    write_private_file(path, data)
    return data


async def unseal(settings: SettingsT, bundle_for: Callable[[SettingsT, Identity], SignedBundle],
                 log: logging.Logger) -> tuple[Identity, bytes]:
    """The service's identity and its signed bundle (see load_or_issue_bundle), off the
    event loop: Argon2id unsealing takes a moment of CPU."""
    identity = await asyncio.to_thread(
        load_or_create_identity, settings.key_path, settings.passphrase()
    )
    bundle = await asyncio.to_thread(
        load_or_issue_bundle, settings.bundle_path, identity, bundle_for(settings, identity), log
    )
    return identity, bundle


def onion_status(publisher: Any) -> tuple[bool | None, str | None, str | None]:
    """(published, state, reason) from the publisher's status, tolerant of its shape."""
    if publisher is None:
        return None, None, None
    status = getattr(publisher, "status", None)
    raw_state = getattr(status, "state", status)
    state = getattr(raw_state, "value", raw_state)
    state_text = None if state is None else str(state)
    reason = getattr(status, "reason", None)
    published = state_text is not None and state_text.lower() in {"published", "up", "online"}
    return published, state_text, None if reason is None else str(reason)


def answer_redis_errors(app: FastAPI, log: logging.Logger) -> None:
    """Any RedisError escaping a route becomes a 503 the client may retry."""

    async def redis_down(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotReplicated):
            # Stored on the primary only: a 201 would promise what a failover could undo.
            log.warning("write not acknowledged: %s", exc)
            return error_json(503, f"not acknowledged: {exc}; retry later",
                              headers={"Retry-After": "2"})
        log.warning("storage unavailable: %s", exc)
        return error_json(503, "storage is unavailable, retry later",
                          headers={"Retry-After": "2"})

    app.add_exception_handler(RedisError, redis_down)


@dataclass
class OnionService(Generic[SettingsT]):
    """A running service: its identity, bundle and Redis, its background tasks (age
    trimming, the onion publisher, the service's own), and its open SSE streams."""

    # Set by each service: its logger, its metrics, and what its stream holds ("blobs").
    log: ClassVar[logging.Logger]
    streams_gauge: ClassVar[Gauge]
    trimmed_counter: ClassVar[Counter]
    entries: ClassVar[str]

    settings: SettingsT
    identity: Identity
    bundle: bytes
    redis: aioredis.Redis
    publisher: Any = field(default=None, init=False)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)
    active_streams: int = field(default=0, init=False)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    def start(self, stream: RetainedStream[Any]) -> None:
        """Trim the stream by age, and publish the onion when tor is configured."""
        self.spawn(self._trim_loop(stream), "age-trim")
        self.publish_onion()

    def publish_onion(self) -> None:
        """Publish the onion through tor's control port, when one is configured (start
        does it; a service without a retained stream calls it alone)."""
        if self.settings.tor_control:
            self._start_publisher()
        elif self.settings.onionbalance_instance is not None:
            self._start_instance(self.settings.onionbalance_instance)

    def _start_instance(self, slot: int) -> None:
        from nyth.tor.onionbalance import BalancedInstance

        settings = self.settings
        self.publisher = BalancedInstance(
            self.identity, slot, virtual_port=settings.onion_port,
            target=settings.effective_onion_target,
            client_torrc_file=settings.tor_client_torrc_file)
        self.spawn(self.publisher.run(), "onionbalance-instance")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(cancel_and_wait(task, log=self.log) for task in self.tasks))
        await close_redis(self.redis)

    async def _trim_loop(self, stream: RetainedStream[Any]) -> None:
        while True:
            try:
                removed = await stream.trim_by_age()
                if removed:
                    self.trimmed_counter.inc(removed)
                    self.log.info("trimmed %d %s past max age", removed, self.entries)
            except RedisError as exc:
                self.log.warning("age trim failed: %s", exc)
            await asyncio.sleep(self.settings.trim_interval_seconds)

    def _start_publisher(self) -> None:
        settings = self.settings
        assert settings.tor_control is not None
        # Imported here: only deployments that publish an onion need tor/stem wiring.
        from nyth.tor.endpoints import ControlEndpoint
        from nyth.tor.publisher import OnionPublisher

        password = (
            settings.tor_control_password.get_secret_value()
            if settings.tor_control_password is not None else None
        )
        control = ControlEndpoint.from_string(settings.tor_control, password)

        def on_status(*args: Any) -> None:
            _published, state_text, reason = onion_status(self.publisher)
            self.log.info("onion %s.onion: %s%s", self.identity.onion, state_text,
                          f" ({reason})" if reason else "")

        self.publisher = OnionPublisher(
            control, self.identity, virtual_port=settings.onion_port,
            target=settings.effective_onion_target, on_status=on_status,
        )
        self.spawn(self.publisher.run(), "onion-publisher")
        self.log.info("publishing %s.onion:%d -> %s through tor at %s", self.identity.onion,
                      settings.onion_port, settings.effective_onion_target, control)

    async def health(self, model: type[Health] = Health, **extra: Any) -> Response:
        """The /healthz answer: 200, or 503 while Redis does not answer a PING."""
        published, onion_state, onion_reason = onion_status(self.publisher)
        health = model(status="ok", onion=self.identity.onion, redis="ok",
                       onion_published=published, onion_state=onion_state,
                       onion_reason=onion_reason, reason=None, **extra)
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            health.status = "unavailable"
            health.redis = f"unreachable: {exc.__class__.__name__}"
            health.reason = "redis is unreachable"
            return JSONResponse(health.model_dump(), status_code=503)
        return JSONResponse(health.model_dump())

    def event_stream(self, events: AsyncIterator[ServerSentEvent],
                     close_feed: Callable[[], None]) -> Response:
        """Serve events to one client in one of the max_streams slots; 503 when all are
        taken. close_feed, called once the server shuts down, must make events end."""
        if self.active_streams >= self.settings.max_streams:
            return error_json(503, "too many open streams on this server; retry later",
                              headers={"Retry-After": "5"})
        self.active_streams += 1
        self.streams_gauge.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active_streams -= 1
                self.streams_gauge.dec()

        # sse-starlette sets this when uvicorn begins shutting down; streams then end
        # cooperatively (a proper end of body) instead of being cut off mid-response.
        shutdown = anyio.Event()

        async def guarded() -> AsyncIterator[ServerSentEvent]:
            async def close_feed_on_shutdown() -> None:
                await shutdown.wait()
                close_feed()

            watcher = asyncio.create_task(close_feed_on_shutdown())
            try:
                async for event in events:
                    yield event
            finally:
                watcher.cancel()
                release()

        async def release_after_response() -> None:
            release()

        return EventSourceResponse(
            guarded(), ping=self.settings.keepalive_seconds,
            background=BackgroundTask(release_after_response),
            # A client that stops reading would otherwise hold its slot forever.
            send_timeout=60,
            shutdown_event=shutdown, shutdown_grace_period=2.0,
        )
