"""The peer engine: one profile's P2P node, onion, messenger and groups, wired together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import httpx
from nyth.config import parse_host_port
from nyth.healthz import onion_from_healthz
from nyth.latency import LatencyBook
from nyth.mailbox_traffic import TrafficPolicy
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import normalize_onion
from nyth.proto.recovery import RecoveryPolicy
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint
from nyth.tor.publisher import OnionPublisher, PublisherStatus
from nyth.tor.socks import forget_onion_failures, onion_http_client

from nyth_peer.discovery import Discovery, isolated_client
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService, with_test_reader
from nyth_peer.mailbox import MailboxService
from nyth_peer.messenger import ACCEPTED, Messenger
from nyth_peer.p2p import P2P_MAX_STREAMS, P2P_VIRTUAL_PORT, P2PLimits, P2PNode
from nyth_peer.pins import GROUP, KINDS, PinKind, Pins
from nyth_peer.profile import Profile
from nyth_peer.round_trips import timed
from nyth_peer.settings import PeerSettings
from nyth_peer.tokens import isolated_http_factory

log = logging.getLogger(__name__)

# A post waits at most this many times the mean delay (NYTH_MAILBOX_POST_DELAY_SECONDS).
POST_DELAY_CAP_FACTOR = 4.0


class Engine:
    def __init__(self, settings: PeerSettings) -> None:
        self.settings = settings
        self.events = EventBus()
        self.profile: Profile | None = None
        self.messenger: Messenger | None = None
        self.groups: GroupService | None = None
        self.mailbox: MailboxService | None = None
        self.node: P2PNode | None = None
        self.discovery: Discovery | None = None
        self.onion_status: dict[str, Any] = {"state": "locked", "reason": "profile not unlocked"}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.retry = RetryPolicy(initial=settings.retry_initial_seconds,
                                 cap=settings.retry_cap_seconds)
        self._lock = asyncio.Lock()
        self._last_newnym = 0.0
        # Round trips of answered requests per server onion (nyth_peer.round_trips);
        # shown for pinned servers in GET /v1/servers.
        self.server_latency = LatencyBook(max_keys=256)

    @property
    def socks(self) -> SocksEndpoint:
        return SocksEndpoint(*parse_host_port(self.settings.tor_socks))

    @property
    def control(self) -> ControlEndpoint:
        host, port = parse_host_port(self.settings.tor_control)
        password = self.settings.tor_control_password
        return ControlEndpoint(host, port, password.get_secret_value() if password else None)

    async def activate(self, profile: Profile) -> None:
        async with self._lock:
            if self.profile is not None:
                return
            self.profile = profile
            self.messenger = Messenger(profile, self.events, self.retry)
            limits = P2PLimits(stranger_idle_timeout=self.settings.p2p_stranger_idle_seconds)
            self.node = P2PNode(profile.identity, self.socks, on_message=self.messenger.on_message,
                                on_ack=self.messenger.on_ack, on_state=self.messenger.on_state,
                                is_contact=self.messenger.is_contact, limits=limits)
            port = await self.node.listen(self.settings.p2p_host, self.settings.p2p_port)
            target = self.settings.onion_target or f"{self.settings.p2p_host}:{port}"
            publisher = OnionPublisher(self.control, profile.identity,
                                       virtual_port=P2P_VIRTUAL_PORT, target=target,
                                       on_status=self._on_onion_status,
                                       max_streams=P2P_MAX_STREAMS)
            self._spawn(publisher.run())
            socks = self.socks
            self.groups = GroupService(profile, self.events, self.messenger,
                                       self.group_http_factory(), self.retry,
                                       policy=self.recovery_policy())
            self.groups.on_onion_failure = self.forget_onion_failures
            self.groups.tokens.http_factory = timed(isolated_http_factory(socks),
                                                    self.server_latency)
            self.groups.recovery.node = self.node
            mailbox_onion = await self._mailbox_onion()
            self.mailbox = MailboxService(
                profile, self.events,
                timed(lambda iso: onion_http_client(socks, timeout=120.0, username=iso.username,
                                                    password=iso.password),
                      self.server_latency),
                mailbox_onion=mailbox_onion, poll_seconds=self.settings.mailbox_poll_seconds,
                detection_bits=self.settings.detection_bits,
                on_record=self.messenger.on_mailbox_record, retry=self.retry,
                on_onion_failure=self.forget_onion_failures, traffic=self._traffic())
            self.messenger.mailbox = self.mailbox
            self.messenger.mailbox_after = self.settings.mailbox_after_seconds
            self.messenger.on_onion_failure = self.forget_onion_failures
            self.messenger.start(self.node)
            self.groups.start()
            self.mailbox.start()
            self.discovery = self._discovery(profile)
            self.discovery.start()
            self._spawn(self._greet_contacts())
            log.info("profile unlocked: %s.onion", profile.identity.onion)
            self.events.publish("profile", state="unlocked", onion=profile.identity.onion)

    def group_http_factory(self) -> Callable[[], httpx.AsyncClient]:
        """Clients for group servers, through tor; in dev mode with NYTH_TEST_READER_LABEL
        they name us in the Nyth-Test-Reader header (a test hook, see with_test_reader)."""
        socks = self.socks
        return timed(with_test_reader(lambda: onion_http_client(socks, timeout=120.0),
                                      self.settings.test_reader_label), self.server_latency)

    def _discovery(self, profile: Profile) -> Discovery:
        socks = self.socks
        assert self.groups is not None
        return Discovery(
            profile.store,
            isolated_client(lambda user, password: onion_http_client(
                socks, timeout=120.0, username=user, password=password)),
            self.groups.pin_server, indexes=self.settings.discovery_indexes,
            healthz=self.settings.discovery_healthz,
            refresh_seconds=self.settings.discovery_refresh_seconds,
            on_onion_failure=self.forget_onion_failures)

    def recovery_policy(self) -> RecoveryPolicy:
        return RecoveryPolicy(first_delay_ms=int(self.settings.recovery_grace_seconds * 1000),
                              heads_every_ms=int(self.settings.recovery_heads_seconds * 1000))

    def _traffic(self) -> TrafficPolicy:
        mean = self.settings.mailbox_post_delay_seconds
        return TrafficPolicy(post_delay_mean=mean, post_delay_cap=POST_DELAY_CAP_FACTOR * mean,
                             card_post_gap=self.settings.mailbox_card_gap_seconds)

    # -- pinned servers --------------------------------------------------------------------
    def servers(self) -> list[dict[str, Any]]:
        """Every pinned server (group servers, mailboxes): what it promises, what it
        presents instead if that changed, its state, and what uses it."""
        assert self.profile is not None
        return [self._server_view(view) for view in Pins(self.profile.store).views()]

    def server(self, onion: str) -> dict[str, Any]:
        assert self.profile is not None
        return self._server_view(Pins(self.profile.store).view(onion))

    async def repin(self, onion: str, reviewed_sha256: str) -> dict[str, Any]:
        """Pin the bundle the server presents now if it is the one the user reviewed
        (named by its SHA-256), then resume whatever waited for that server."""
        assert self.profile is not None and self.groups is not None and self.mailbox is not None
        pins = Pins(self.profile.store)
        kind = pins.kind_of(onion)
        fresh = await self._fetch_bundle(kind, onion)
        pins.repin(kind, onion, fresh, reviewed_sha256)
        log.info("re-pinned %s.onion (%s)", onion, kind.name)
        if kind is GROUP:
            self.groups.resume(onion, fresh)
        else:
            self.mailbox.resume(onion)
            assert self.messenger is not None
            self.messenger.resume_mailbox(onion)
        return self.server(onion)

    async def _fetch_bundle(self, kind: PinKind, onion: str) -> bytes:
        assert self.groups is not None and self.mailbox is not None
        if kind is GROUP:
            return await self.groups.fetch_bundle(onion)
        return await self.mailbox.fetch_bundle(onion)

    def _server_view(self, view: dict[str, Any]) -> dict[str, Any]:
        assert self.groups is not None and self.mailbox is not None and self.profile is not None
        onion = view["onion"]
        if view["kind"] == GROUP.name:
            state = self.groups.server_state.get(onion)
            used_for = [f"group {g['name']}" for g in self.profile.store.list("groups")
                        if onion in g["servers"]]
            if self.discovery is not None:
                used_for += self.discovery.uses(onion)
        else:
            ours = onion == self.mailbox.mailbox_onion
            state = self.mailbox.state if ours else None
            used_for = (["our mailbox"] if ours else []) + [
                f"mailbox of contact {c.get('name') or c['onion']}"
                for c in self.profile.store.list("contacts") if c.get("mailbox") == onion]
        if state is None:
            # Nothing runs against this server on its own (a contact's mailbox, a server of
            # no group); a refused bundle is still something the user must decide about.
            reason = Pins(self.profile.store).refusal(KINDS[view["kind"]], onion)
            state = {"state": "idle" if reason is None else "bundle_changed", "reason": reason}
        tokens = self.groups.tokens.view(onion) if view["kind"] == GROUP.name else None
        return {**view, "used_for": used_for, "state": state["state"],
                "reason": state.get("reason"), "since": state.get("since"),
                "next_retry_at": state.get("next_retry_at"), "tokens": tokens,
                "latency": self.server_latency.summary(onion)}

    async def _mailbox_onion(self) -> str | None:
        if self.settings.mailbox:
            return normalize_onion(self.settings.mailbox)
        url = self.settings.mailbox_healthz
        if not url:
            return None
        onion = await onion_from_healthz(url)
        if onion is None:
            log.warning("no mailbox: %s did not tell its onion within a minute", url)
        return onion

    def forget_onion_failures(self) -> None:
        """After a failed onion lookup tor avoids those directories for minutes; a service
        that just came back would stay unreachable. NEWNYM (at most every 10 s) clears it."""
        now = time.monotonic()
        if now - self._last_newnym < 10:
            return
        self._last_newnym = now
        # Best effort: a gateway that is down is reported by the publisher already.
        self._spawn(forget_onion_failures(self.control), quiet=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, quiet: bool = False) -> asyncio.Task[Any]:
        """Run coro in the background until close(). Finished tasks leave the set: a NEWNYM
        every 10 s while a contact is unreachable would otherwise pile up forever."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                return
            exc = task.exception()   # retrieved either way, so asyncio does not complain
            if exc is not None and not quiet:
                log.error("background task failed", exc_info=exc)

        task.add_done_callback(done)
        return task

    def _on_onion_status(self, status: PublisherStatus) -> None:
        fields = asdict(status)
        self.onion_status = fields
        self.events.publish("onion", **fields)

    async def _greet_contacts(self) -> None:
        """Say hello to every contact once we are online, as Cwtch peers do, so contacts
        that queued messages for us deliver them now instead of at their next retry."""
        assert self.messenger is not None and self.node is not None
        deadline = time.time() + 120
        while self.onion_status.get("state") != "published" and time.time() < deadline:
            await asyncio.sleep(0.5)
        sem = asyncio.Semaphore(4)

        async def greet(onion: str) -> None:
            async with sem:
                try:
                    assert self.node is not None
                    await self.node.session_for(onion, timeout=60)
                except Exception as exc:
                    log.debug("contact not reachable at start: %s", type(exc).__name__)

        contacts = [c["onion"] for c in self.messenger.contacts() if c["status"] == ACCEPTED]
        await asyncio.gather(*(greet(o) for o in contacts))

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.discovery is not None:
            await self.discovery.stop()
        if self.groups is not None:
            await self.groups.stop()
        if self.mailbox is not None:
            await self.mailbox.stop()
        if self.messenger is not None:
            await self.messenger.stop()
        if self.node is not None:
            await self.node.close()
        if self.profile is not None:
            self.profile.store.close()
