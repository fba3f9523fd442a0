"""Keep one onion service published on a tor gateway, whatever happens to the gateway.

An onion added with ADD_ONION lives only as long as the control connection that added
it, and every onion dies when tor restarts: whoever holds the key has to publish it
again. OnionPublisher does that by itself, and says at every moment what it is doing
and why (a `PublisherStatus`), so a service and its operator can tell "starting" from
"tor gateway is down" from "descriptor upload keeps failing".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import stem
import stem.control
import stem.response.add_onion
import stem.response.events
from stem.control import EventType

from nyth.errors import NythError
from nyth.proto.identity import Identity
from nyth.tor.endpoints import ControlConnectError, ControlEndpoint, open_controller

log = logging.getLogger(__name__)

PublisherState = Literal["connecting", "publishing", "published", "unreachable"]

_KEY_IN_TEXT = re.compile(r"((?:ED25519-V3|RSA1024|x25519|descriptor:x25519):)\S+", re.IGNORECASE)


class _RedactOnionKeys(logging.Filter):
    """stem logs every control command at its TRACE level, ADD_ONION's key included;
    this keeps the key out of any log a deployment may have turned up to TRACE."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and _KEY_IN_TEXT.search(record.msg):
            record.msg = _KEY_IN_TEXT.sub(r"\1<redacted>", record.msg)
        return True


def _install_redaction() -> None:
    stem_logger = logging.getLogger("stem")
    if not any(isinstance(f, _RedactOnionKeys) for f in stem_logger.filters):
        stem_logger.addFilter(_RedactOnionKeys())


_install_redaction()


# Seconds to wait for the remaining HSDir uploads once one has succeeded.
_UPLOAD_GRACE = 5.0


class OnionAddressMismatchError(NythError):
    """tor derived a different onion address from our key than we did: a bug in our key
    handling, never a transient condition, so the publisher stops instead of retrying."""


class _PublishFailed(Exception):
    """One publication attempt failed; str() is the reason shown to users."""


@dataclass(frozen=True)
class PublisherStatus:
    """What the publisher is doing. Times are wall-clock (time.time()), for display."""

    state: PublisherState
    reason: str | None
    since: float
    next_retry_at: float | None = None


class OnionPublisher:
    """Publishes `identity`'s onion on a tor gateway and re-publishes it after any loss.

    `run()` runs until cancelled. Reconnects use capped exponential backoff
    (`initial_backoff` doubling up to `max_backoff`), reset after each success.
    `max_streams` caps the simultaneous streams one rendezvous circuit may open to us
    (ADD_ONION MaxStreams; tor closes a circuit that goes over); None: no cap.
    """

    def __init__(
        self,
        control: ControlEndpoint,
        identity: Identity,
        *,
        virtual_port: int,
        target: str,
        on_status: Callable[[PublisherStatus], None] | None = None,
        publish_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_streams: int | None = None,
    ) -> None:
        if not 1 <= virtual_port <= 65535:
            raise ValueError(f"virtual_port {virtual_port} is outside 1-65535")
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target {target!r} must be host:port")
        self._control = control
        self._identity = identity
        self._onion = identity.onion
        self._virtual_port = virtual_port
        self._target = target
        self._on_status = on_status
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        if max_streams is not None and not 1 <= max_streams <= 65535:
            raise ValueError(f"max_streams {max_streams} is outside 1-65535")
        self._max_streams = max_streams
        self._status = PublisherStatus("connecting", None, time.time())
        self._changed = asyncio.Event()
        self._fatal: BaseException | None = None
        self._running = False
        self._last_failure: str | None = None

    @property
    def onion(self) -> str:
        return self._onion

    @property
    def status(self) -> PublisherStatus:
        return self._status

    async def wait_published(self, timeout: float) -> None:
        """Return once the onion is published; TimeoutError says what was last seen."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._fatal is not None:
                        raise self._fatal
                    if self._status.state == "published":
                        return
                    await self._changed.wait()
        except TimeoutError:
            status = self._status
            detail = f"{status.state}" + (f": {status.reason}" if status.reason else "")
            if status.reason is None and self._last_failure:
                # Caught between retries: the failure that made it retry is the news.
                detail += f"; last failure: {self._last_failure}"
            raise TimeoutError(
                f"onion {self._onion[:8]}… not published within {timeout:g}s ({detail})"
            ) from None

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("OnionPublisher.run() is already running")
        self._running = True
        failures = 0
        try:
            while True:
                self._set_status("connecting", None)
                try:
                    await self._publish_and_hold()
                    failures = 0
                    reason = (
                        f"lost the control connection to tor gateway {self._control} "
                        "(gateway restarted or stopped); publishing again"
                    )
                except _PublishFailed as exc:
                    reason = str(exc)
                except OnionAddressMismatchError:
                    raise
                except Exception as exc:
                    # A publisher is a background task: an unforeseen error must not end
                    # it silently, nor end it at all - report it and try again.
                    log.exception("onion %s… publisher: unexpected error", self._onion[:8])
                    reason = f"unexpected error: {exc.__class__.__name__}: {exc}"
                delay = min(self._max_backoff, self._initial_backoff * 2**failures)
                failures += 1
                self._set_status("unreachable", reason, next_retry_at=time.time() + delay)
                log.warning("onion %s… unreachable: %s; retrying in %.1fs", self._onion[:8],
                            reason, delay)
                await asyncio.sleep(delay)
        except OnionAddressMismatchError as exc:
            self._fatal = exc
            self._set_status("unreachable", str(exc))
            raise
        finally:
            self._running = False

    # -- one attempt --------------------------------------------------------------

    async def _publish_and_hold(self) -> None:
        """Connect, publish, and hold the connection until it is lost.

        Returns when a published onion lost its control connection; raises
        _PublishFailed for failures before that.
        """
        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        events: asyncio.Queue[stem.response.events.HSDescEvent] = asyncio.Queue()
        where = f"tor gateway {self._control}"

        def on_state(_controller: Any, state: stem.control.State, _when: float) -> None:
            if state == stem.control.State.CLOSED:
                _call_soon(loop, lost.set)

        def on_hs_desc(event: stem.response.events.HSDescEvent) -> None:
            # UPLOADED may come without the address (stem notes tor omitting it).
            if event.address == self._onion or (
                event.action == stem.HSDescAction.UPLOADED
                and event.address in (None, "", "UNKNOWN")
            ):
                _call_soon(loop, events.put_nowait, event)

        opening = asyncio.ensure_future(asyncio.to_thread(
            open_controller, self._control, connect_timeout=self._connect_timeout
        ))
        try:
            controller = await asyncio.shield(opening)
        except ControlConnectError as exc:
            raise _PublishFailed(str(exc)) from exc
        except asyncio.CancelledError:
            # The thread still finishes connecting; close what it opens.
            opening.add_done_callback(_close_when_opened)
            raise
        published = False
        try:
            controller.add_status_listener(on_state)
            self._set_status("publishing", None)
            try:
                response = await asyncio.to_thread(self._add_onion, controller, on_hs_desc)
            except OSError as exc:
                raise _PublishFailed(f"cannot resolve the onion's target {self._target} "
                                     f"({exc})") from exc
            except stem.SocketClosed as exc:
                raise _PublishFailed(f"{where} closed the control connection while "
                                     "publishing") from exc
            except stem.ControllerError as exc:
                raise _PublishFailed(self._explain_add_onion_error(exc)) from exc
            published = True
            if response.service_id != self._onion:
                raise OnionAddressMismatchError(
                    f"tor derived onion {response.service_id} from our key but we derived "
                    f"{self._onion}: refusing to publish under a wrong address"
                )
            await self._await_upload(events, lost)
            with contextlib.suppress(stem.ControllerError):
                await asyncio.to_thread(controller.remove_event_listener, on_hs_desc)
            self._set_status("published", None)
            log.info("onion %s… published on %s", self._onion[:8], where)
            await self._hold(controller, lost)
        finally:
            await _shielded_cleanup(controller, self._onion if published else None)

    def _add_onion(
        self,
        controller: stem.control.Controller,
        listener: Callable[[stem.response.events.HSDescEvent], None],
    ) -> stem.response.add_onion.AddOnionResponse:
        target = resolve_target(self._target)
        # Listen before ADD_ONION: the first HS_DESC events can beat the reply.
        controller.add_event_listener(listener, EventType.HS_DESC)
        # Publication is awaited on the asyncio side (cancellable), not with stem's
        # await_publication, whose blocking wait would outlive a cancelled task.
        response: stem.response.add_onion.AddOnionResponse = (
            controller.create_ephemeral_hidden_service(
                {self._virtual_port: target},
                key_type="ED25519-V3",
                key_content=self._identity.tor_key_blob(),
                await_publication=False,
                detached=False,
                # Per rendezvous circuit; stem adds MaxStreamsCloseCircuit, so a client
                # going over loses its circuit instead of queueing more streams.
                max_streams=self._max_streams,
            )
        )
        return response

    def _explain_add_onion_error(self, exc: stem.ControllerError) -> str:
        where = f"tor gateway {self._control}"
        text = str(exc)
        if "collision" in text.lower():
            return (f"{where} already serves this onion on another control connection "
                    "(is a second publisher running for this identity?)")
        return f"{where} refused to add the onion: {text}"

    async def _await_upload(
        self,
        events: asyncio.Queue[stem.response.events.HSDescEvent],
        lost: asyncio.Event,
    ) -> None:
        """Wait until tor has uploaded the descriptor to the HSDirs it chose.

        A client that looks the onion up too early gets "descriptor not found" and then
        avoids those HSDirs for a while. The first UPLOADED is not enough: tor uploads
        two descriptors (this and the next time period) to every responsible HSDir at
        once, and the rest land over the next few hundred ms (measured) - a client asking
        one of those in between fails. So: wait for every UPLOAD to end in UPLOADED or
        FAILED, or for `_UPLOAD_GRACE` seconds after the first success.
        """
        where = f"tor gateway {self._control}"
        pending: dict[str, int] = {}  # HSDir -> uploads launched and not yet answered
        failures: list[str] = []
        uploaded = 0
        deadline = time.monotonic() + self._publish_timeout
        while True:
            if uploaded and not any(pending.values()):
                return
            if lost.is_set():
                raise _PublishFailed(f"{where} closed the control connection before the "
                                     "onion descriptor was uploaded")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if uploaded:
                    return
                raise _PublishFailed(
                    f"{where} did not upload the onion descriptor within "
                    f"{self._publish_timeout:g}s (is it bootstrapped and connected to Tor?)"
                )
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    event = await events.get()
            except TimeoutError:
                continue
            directory = event.directory_fingerprint or event.directory or "?"
            if event.action == stem.HSDescAction.UPLOAD:
                pending[directory] = pending.get(directory, 0) + 1
            elif event.action in (stem.HSDescAction.UPLOADED, stem.HSDescAction.FAILED):
                if pending.get(directory):
                    pending[directory] -= 1
                if event.action == stem.HSDescAction.UPLOADED:
                    if not uploaded:
                        deadline = min(deadline, time.monotonic() + _UPLOAD_GRACE)
                    uploaded += 1
                else:
                    failures.append(event.reason or "unknown reason")
                    if not uploaded and pending and not any(pending.values()):
                        detail = ", ".join(sorted(set(failures)))
                        raise _PublishFailed(f"{where} could not upload the onion descriptor "
                                             f"to any HSDir ({detail})")

    async def _hold(self, controller: stem.control.Controller, lost: asyncio.Event) -> None:
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await lost.wait()
            # Belt and braces: stem's CLOSED notification comes from its reader thread.
            if not controller.is_alive():
                return

    # -- status ---------------------------------------------------------------------

    def _set_status(
        self, state: PublisherState, reason: str | None, *, next_retry_at: float | None = None
    ) -> None:
        self._status = PublisherStatus(state, reason, time.time(), next_retry_at)
        if state == "unreachable" and reason:
            self._last_failure = reason
        elif state == "published":
            self._last_failure = None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_status is not None:
            try:
                self._on_status(self._status)
            except Exception:
                log.exception("on_status callback failed")


def resolve_target(target: str) -> str:
    """"host:port" with the host as an IP literal, as ADD_ONION requires.

    tor refuses hostnames other than localhost in `Port=` ("Invalid VIRTPORT/TARGET",
    measured), but compose names services by hostname. Resolved at every publication,
    since a restarted container may come back with another address.
    """
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        # Prefer IPv4: that is what compose networks and our private network use.
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        ip = ipaddress.ip_address(infos[0][4][0])
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    # Called from stem's threads; the loop may already be gone at shutdown.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _close_when_opened(opening: asyncio.Future[stem.control.Controller]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        threading.Thread(target=opening.result().close, daemon=True).start()


def _remove_and_close(controller: stem.control.Controller, onion: str | None) -> None:
    try:
        if onion is not None and controller.is_alive():
            controller.remove_ephemeral_hidden_service(onion)
    except stem.ControllerError as exc:
        log.debug("could not remove onion %s…: %s", onion[:8] if onion else "", exc)
    finally:
        # Closing also drops the onion on tor's side: it was added without Detach.
        controller.close()


async def _shielded_cleanup(controller: stem.control.Controller, onion: str | None) -> None:
    """Remove the onion and close the controller, even when we are being cancelled."""
    done = threading.Event()

    def work() -> None:
        try:
            _remove_and_close(controller, onion)
        finally:
            done.set()

    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # Cancelled again while cleaning up: finish the (short) cleanup anyway, so no
        # onion outlives the publisher.
        await asyncio.to_thread(done.wait, 10.0)
        raise
