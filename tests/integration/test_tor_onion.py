"""The Tor layer against real tor processes: onion derivation, publishing, reconnects,
and readable failures. Most tests run on the session's private Tor network."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import pytest
from nyth.ports import free_port
from nyth.proto.identity import Identity
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint, open_controller
from nyth.tor.gateway import TorGateway, hash_control_password
from nyth.tor.privnet import TorProcess
from nyth.tor.publisher import OnionAddressMismatchError, OnionPublisher, PublisherStatus
from nyth.tor.socks import (
    OnionConnectError,
    forget_onion_failures,
    onion_http_client,
    open_onion_connection,
)

from tests.fixtures.echo import echo_server

pytestmark = pytest.mark.integration

MakeGateway = Callable[..., TorGateway]


# -- helpers --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _running(publisher: OnionPublisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


async def _echo_round_trips(
    socks: SocksEndpoint, onion: str, *, count: int = 20, timeout: float = 30
) -> list[float]:
    reader, writer = await open_onion_connection(socks, onion, 80, timeout=timeout)
    try:
        times = []
        for i in range(count):
            payload = f"ping {i} ".encode() * 8
            started = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
            times.append(time.perf_counter() - started)
            assert echoed == payload
        return times
    finally:
        writer.close()


def _closed_port() -> int:
    # A port nothing listens on: bound once, then released.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- (a) our onion derivation against tor itself ------------------------------------------


@pytest.fixture(scope="module")
def offline_tor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TorProcess, ControlEndpoint]]:
    """A tor with no network at all: ADD_ONION still derives and reports addresses."""
    password = "derivation-check"
    port = free_port()
    data_dir = tmp_path_factory.mktemp("offline-tor")
    tor = TorProcess(
        "offline",
        data_dir,
        [
            f'DataDirectory "{data_dir}"',
            "Log notice stdout",
            # Same pid as our controllers: stem would TAKEOWNERSHIP (and closing one
            # would stop tor) unless open_controller prevents that.
            f"__OwningControllerProcess {os.getpid()}",
            "DisableNetwork 1",
            "SocksPort 0",
            f"ControlPort 127.0.0.1:{port}",
            f"HashedControlPassword {hash_control_password(password)}",
            'GeoIPFile ""',
            'GeoIPv6File ""',
        ],
    )
    tor.start()
    control = ControlEndpoint("127.0.0.1", port, password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                open_controller(control, connect_timeout=2).close()
                break
            except ConnectionError:
                assert tor.running, tor.log_tail()
                assert time.monotonic() < deadline, tor.log_tail()
                time.sleep(0.1)
        yield tor, control
    finally:
        tor.stop()
    assert not tor.running


def test_tor_derives_the_same_onion_addresses_as_we_do(
    offline_tor: tuple[TorProcess, ControlEndpoint],
) -> None:
    tor, control = offline_tor
    controller = open_controller(control)
    try:
        identities = [Identity.generate() for _ in range(8)]
        identities.append(Identity.from_seed(bytes(32)))
        identities.append(Identity.from_seed(bytes(range(32))))
        for identity in identities:
            response = controller.create_ephemeral_hidden_service(
                {80: "127.0.0.1:9"},
                key_type="ED25519-V3",
                key_content=identity.tor_key_blob(),
                await_publication=False,
            )
            assert response.service_id == identity.onion
            assert controller.remove_ephemeral_hidden_service(identity.onion)
    finally:
        controller.close()
    # Our non-owning controller must not have stopped tor on close.
    time.sleep(0.3)
    assert tor.running


class _KeyOfAnother:
    """Claims one identity's onion but hands tor another identity's key."""

    def __init__(self) -> None:
        self.onion = Identity.generate().onion
        self._other = Identity.generate()

    def tor_key_blob(self) -> str:
        return self._other.tor_key_blob()


async def test_publisher_refuses_an_onion_tor_derives_differently(
    offline_tor: tuple[TorProcess, ControlEndpoint],
) -> None:
    _, control = offline_tor
    seen: list[PublisherStatus] = []
    publisher = OnionPublisher(
        control, cast(Identity, _KeyOfAnother()), virtual_port=80, target="127.0.0.1:9",
        on_status=seen.append,
    )
    with pytest.raises(OnionAddressMismatchError):
        await asyncio.wait_for(publisher.run(), 10)
    assert publisher.status.state == "unreachable"
    assert "refusing to publish" in (publisher.status.reason or "")
    with pytest.raises(OnionAddressMismatchError):
        await publisher.wait_published(1)
    assert [s.state for s in seen] == ["connecting", "publishing", "unreachable"]


def test_control_password_hash_matches_tor_hash_password() -> None:
    out = subprocess.run(
        ["tor", "--hash-password", "s3cret pass", "--quiet"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip().splitlines()[-1]
    assert out.startswith("16:")
    salt = bytes.fromhex(out[3:19])
    assert hash_control_password("s3cret pass", salt=salt) == out


# -- local failure modes (no Tor network needed) --------------------------------------------


async def test_refused_socks_port_is_a_clear_error() -> None:
    socks = SocksEndpoint("127.0.0.1", _closed_port())
    started = time.monotonic()
    with pytest.raises(OnionConnectError) as info:
        await open_onion_connection(socks, Identity.generate().onion, 80, timeout=5)
    assert time.monotonic() - started < 5
    assert info.value.code is None
    assert f"SOCKS port {socks}" in info.value.reason
    assert "refused" in info.value.reason


async def test_malformed_onion_is_rejected_before_asking_tor() -> None:
    onion = Identity.generate().onion
    typo = ("a" if onion[0] != "a" else "b") + onion[1:]
    with pytest.raises(OnionConnectError, match="not a valid onion address"):
        await open_onion_connection(SocksEndpoint("127.0.0.1", 1), typo, 80, timeout=5)


@pytest.mark.parametrize("code", [0xF0, 0xF2, 0xF3, 0xF7, 0x01, 0x06])
async def test_socks_reply_codes_from_a_socks_server(code: int) -> None:
    """A stand-in SOCKS5 server answering like tor with ExtendedErrors."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)  # greeting: ver, 1 method, no-auth
        writer.write(b"\x05\x00")
        head = await reader.readexactly(5)  # ver cmd rsv atyp=domain len
        await reader.readexactly(head[4] + 2)
        writer.write(bytes([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    socks = SocksEndpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(OnionConnectError) as info:
            await open_onion_connection(socks, Identity.generate().onion, 80, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.code == code


async def test_silent_socks_server_times_out_with_reason() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    socks = SocksEndpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        started = time.monotonic()
        with pytest.raises(OnionConnectError) as info:
            await open_onion_connection(socks, Identity.generate().onion, 80, timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()
    assert "within 0.5s" in info.value.reason


async def test_publisher_reports_an_unreachable_gateway_and_keeps_retrying() -> None:
    control = ControlEndpoint("127.0.0.1", _closed_port(), "pw")
    seen: list[PublisherStatus] = []
    publisher = OnionPublisher(
        control, Identity.generate(), virtual_port=80, target="127.0.0.1:1",
        on_status=seen.append, initial_backoff=0.05, max_backoff=0.2,
    )
    async with _running(publisher) as task:
        deadline = time.monotonic() + 10
        while sum(s.state == "unreachable" for s in seen) < 4:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.02)
        status = publisher.status
        with pytest.raises(TimeoutError, match="refused the connection"):
            await publisher.wait_published(0.1)
    assert task.cancelled()
    unreachable = [s for s in seen if s.state == "unreachable"]
    assert all(f"control port {control} refused the connection" in (s.reason or "")
               for s in unreachable)
    assert all(s.next_retry_at is not None and s.next_retry_at >= s.since for s in unreachable)
    gaps = [s.next_retry_at - s.since for s in unreachable if s.next_retry_at]
    assert gaps[:4] == pytest.approx([0.05, 0.1, 0.2, 0.2], abs=0.01)  # capped doubling
    assert status.state in {"connecting", "unreachable"}


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("silent", "did not answer within 0.5s"), ("http", "is not a tor control port")],
)
async def test_publisher_explains_a_port_that_is_not_tor(behaviour: str, reason: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "http":
            await reader.readline()
            writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()
        else:
            await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    control = ControlEndpoint("127.0.0.1", server.sockets[0].getsockname()[1], "pw")
    publisher = OnionPublisher(
        control, Identity.generate(), virtual_port=80, target="127.0.0.1:1",
        connect_timeout=0.5,
    )
    try:
        async with _running(publisher):
            with pytest.raises(TimeoutError, match=reason):
                await publisher.wait_published(2)
    finally:
        server.close()
        await server.wait_closed()


async def test_publisher_reports_a_wrong_control_password(tor_gateway: TorGateway) -> None:
    gateway = tor_gateway
    wrong = ControlEndpoint(gateway.control.host, gateway.control.port, "not-the-password")
    publisher = OnionPublisher(wrong, Identity.generate(), virtual_port=80, target="127.0.0.1:1")
    async with _running(publisher):
        with pytest.raises(TimeoutError, match="rejected the control password"):
            await publisher.wait_published(3)


# -- (b) publish and echo; (c) republish after the gateway restarts ----------------------------


async def test_published_onion_echoes_through_socks(
    tor_gateway: TorGateway, make_tor_gateway: MakeGateway
) -> None:
    service_gateway = make_tor_gateway()
    identity = Identity.generate()
    async with echo_server() as target:
        publisher = OnionPublisher(
            service_gateway.control, identity, virtual_port=80, target=target
        )
        async with _running(publisher):
            started = time.monotonic()
            await publisher.wait_published(60)
            published = time.monotonic()
            times = await _echo_round_trips(tor_gateway.socks, identity.onion)
            reachable = time.monotonic()
            assert publisher.status.state == "published"
            print(
                f"\npublish {published - started:.2f}s, reachable +{reachable - published:.2f}s,"
                f" echo median {statistics.median(times) * 1000:.2f} ms"
            )
        # Cancelling removed the onion: publishing the same key again is no collision.
        again = OnionPublisher(service_gateway.control, identity, virtual_port=80, target=target)
        async with _running(again):
            await again.wait_published(60)


async def test_onion_http_client_reaches_an_http_onion(
    tor_gateway: TorGateway, make_tor_gateway: MakeGateway
) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    identity = Identity.generate()
    publisher = OnionPublisher(
        make_tor_gateway().control, identity, virtual_port=80, target=target
    )
    try:
        async with _running(publisher):
            await publisher.wait_published(60)
            async with onion_http_client(tor_gateway.socks, timeout=30) as client:
                response = await client.get(f"http://{identity.onion}.onion/")
            assert response.status_code == 200
            assert response.text == "hello"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("how", ["restart", "kill"])
async def test_publisher_republishes_after_gateway_restart(
    how: str, tor_gateway: TorGateway, make_tor_gateway: MakeGateway
) -> None:
    service_gateway = make_tor_gateway()
    identity = Identity.generate()
    seen: list[PublisherStatus] = []
    async with echo_server() as target:
        publisher = OnionPublisher(
            service_gateway.control, identity, virtual_port=80, target=target,
            on_status=seen.append,
        )
        async with _running(publisher):
            await publisher.wait_published(60)
            await _echo_round_trips(tor_gateway.socks, identity.onion, count=3)
            before = len(seen)

            if how == "restart":
                await asyncio.to_thread(service_gateway.restart, 60)
            else:
                service_gateway.kill()
                await asyncio.to_thread(service_gateway.start, 60)
            restarted = time.monotonic()

            # Only waiting from here on: the publisher must notice and publish again.
            deadline = time.monotonic() + 60
            while not any(s.state == "published" for s in seen[before:]):
                assert time.monotonic() < deadline, seen[before:]
                await asyncio.sleep(0.05)
            republished = time.monotonic()
            lost = [s for s in seen[before:] if s.state == "unreachable"]
            assert lost and "lost the control connection" in (lost[0].reason or "")

            # The client still holds the old descriptor. Usually tor refetches it by itself,
            # but when an HSDir still serves the old one the stream hangs until tor's own
            # timeout (CI saw > 45 s once). A peer then forgets the failure (NEWNYM) and
            # retries; this does the same, bounded, and reports how many tries it took.
            attempts = 0
            deadline = time.monotonic() + 120
            while True:
                attempts += 1
                try:
                    times = await _echo_round_trips(
                        tor_gateway.socks, identity.onion, count=3, timeout=20
                    )
                    break
                except (OnionConnectError, TimeoutError) as exc:
                    assert time.monotonic() < deadline, f"unreachable after {attempts} tries: {exc}"
                    await forget_onion_failures(tor_gateway.control)
            assert len(times) == 3
            print(
                f"\n{how}: republished {republished - restarted:.2f}s after the gateway was up,"
                f" reachable +{time.monotonic() - republished:.2f}s after {attempts} attempt(s)"
            )


# -- (d) an onion nobody publishes ---------------------------------------------------------


async def test_unpublished_onion_fails_fast_with_a_reason(tor_gateway: TorGateway) -> None:
    onion = Identity.generate().onion
    started = time.monotonic()
    with pytest.raises(OnionConnectError) as info:
        await open_onion_connection(tor_gateway.socks, onion, 80, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 30
    assert info.value.code == 0xF0, info.value
    assert "descriptor was not found" in info.value.reason
    assert onion in info.value.reason


async def test_failed_lookup_then_publish_then_newnym_reaches_it(
    tor_gateway: TorGateway, make_tor_gateway: MakeGateway
) -> None:
    """The retry path a peer takes when a contact comes online after a failed lookup."""
    identity = Identity.generate()
    with pytest.raises(OnionConnectError) as info:
        await open_onion_connection(tor_gateway.socks, identity.onion, 80, timeout=30)
    assert info.value.code == 0xF0
    async with echo_server() as target:
        publisher = OnionPublisher(
            make_tor_gateway().control, identity, virtual_port=80, target=target
        )
        async with _running(publisher):
            await publisher.wait_published(60)
            await forget_onion_failures(tor_gateway.control)
            assert len(await _echo_round_trips(tor_gateway.socks, identity.onion, count=2)) == 2
