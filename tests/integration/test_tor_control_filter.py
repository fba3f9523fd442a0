"""The control filter in front of a real tor, wired as the gateway container wires it
(nyth.tor.container.make_gateway): publishing and NEWNYM work through it, the rest is
refused with 510 and tor keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import stem
from nyth.proto.identity import Identity
from nyth.tor.container import FilteredGateway, make_gateway
from nyth.tor.control_filter import REFUSAL_TEXT, TargetPolicy
from nyth.tor.endpoints import ControlEndpoint, open_controller
from nyth.tor.gateway import TorGateway
from nyth.tor.privnet import PrivateTorNetwork, TorLaunchError
from nyth.tor.publisher import OnionPublisher
from nyth.tor.socks import forget_onion_failures, open_onion_connection

from tests.fixtures.echo import echo_server

pytestmark = pytest.mark.integration

# The test's echo server listens on 127.0.0.2: loopback is the allowed network here (tests
# run everything on loopback) except 127.0.0.1, where this gateway's tor listens - the
# container allows only its internal network and refuses every local address and its own.
TARGETS = TargetPolicy.for_networks(["127.0.0.0/8"], refused=["127.0.0.1"], refuse_local=False)


@pytest.fixture
def filtered_gateway(
    tor_network: PrivateTorNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FilteredGateway]:
    gateway = make_gateway(
        Path(tmp_path_factory.mktemp("filtered-gateway")),
        password=secrets.token_urlsafe(16), listen="127.0.0.1", socks_port=0,
        control_port=0, internal_control_port=0, filtered=True, targets=TARGETS,
        network=tor_network,
    )
    assert isinstance(gateway, FilteredGateway)
    try:
        gateway.start(timeout=60)
    except TorLaunchError as exc:
        pytest.fail(f"tor gateway did not start: {exc}", pytrace=False)
    try:
        yield gateway
    finally:
        gateway.stop()


class _RawControl:
    """A bare control connection, to send what stem would not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, control: ControlEndpoint) -> _RawControl:
        reader, writer = await asyncio.open_connection(control.host, control.port)
        raw = cls(reader, writer)
        assert (await raw.ask(f'AUTHENTICATE "{control.password}"'))[-1] == "250 OK"
        return raw

    async def ask(self, line: str) -> list[str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        reply: list[str] = []
        while True:
            text = (await asyncio.wait_for(self.reader.readline(), 10)).decode().rstrip("\r\n")
            assert text, f"connection closed after {line!r}"
            if text.startswith("650"):
                continue
            reply.append(text)
            if text[3:4] == " ":
                return reply

    def close(self) -> None:
        self.writer.close()


async def test_publish_echo_newnym_through_the_filter_and_refusals(
    filtered_gateway: FilteredGateway, tor_gateway: TorGateway
) -> None:
    # tor's own control port is on loopback only; clients get the filter's port.
    control_lines = [line for line in filtered_gateway.torrc_lines()
                     if line.startswith("ControlPort")]
    assert control_lines == [f"ControlPort 127.0.0.1:{filtered_gateway.control.port}"]
    control = filtered_gateway.filtered_control
    assert control.port != filtered_gateway.control.port
    identity = Identity.generate()
    async with echo_server("127.0.0.2") as target:
        publisher = OnionPublisher(control, identity, virtual_port=80, target=target,
                                   max_streams=8)
        task = asyncio.create_task(publisher.run())
        try:
            # HS_DESC upload events for our onion must come through, or this times out.
            await publisher.wait_published(60)
            reader, writer = await open_onion_connection(tor_gateway.socks, identity.onion,
                                                         80, timeout=30)
            try:
                writer.write(b"through the filter")
                await writer.drain()
                echoed = await asyncio.wait_for(reader.readexactly(18), 30)
                assert echoed == b"through the filter"
            finally:
                writer.close()
            # NEWNYM through the filter (forget_onion_failures raises on any refusal).
            await forget_onion_failures(control)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)

    raw = await _RawControl.open(control)
    try:
        for line in [
            "SETEVENTS STREAM",
            "SETEVENTS CIRC",
            "GETINFO circuit-status",
            "GETINFO stream-status",
            "SIGNAL HALT",
            "SETCONF SocksPort=127.0.0.1:1",
            "TAKEOWNERSHIP",
            f"ADD_ONION NEW:ED25519-V3 Port=80,127.0.0.1:{filtered_gateway.control.port}",
            "ADD_ONION NEW:ED25519-V3 Port=9051",
            "ADD_ONION NEW:ED25519-V3 Flags=Detach Port=80,127.0.0.2:1",
        ]:
            reply = await raw.ask(line)
            assert len(reply) == 1 and reply[0].startswith(f"510 {REFUSAL_TEXT}"), (line, reply)
        # The connection is still usable, and tor answers what is allowed.
        assert (await raw.ask("GETINFO version"))[-1] == "250 OK"
        added = await raw.ask("ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=80,127.0.0.2:1")
        assert added[-1] == "250 OK" and added[0].startswith("250-ServiceID=")
        assert (await raw.ask(f"DEL_ONION {added[0].split('=', 1)[1]}"))[-1] == "250 OK"
    finally:
        raw.close()

    # stem sees the refusals as ordinary errors, and tor is still there.
    def through_stem() -> None:
        controller = open_controller(control)
        try:
            with pytest.raises(stem.ControllerError):
                controller.get_info("circuit-status")
            with pytest.raises(stem.ControllerError):
                controller.signal(stem.Signal.HALT)
            with pytest.raises(stem.ControllerError):
                controller.set_conf("SocksPort", "127.0.0.1:1")
            assert controller.get_info("version")
        finally:
            controller.close()

    await asyncio.to_thread(through_stem)
    await asyncio.sleep(0.5)
    assert filtered_gateway.running
    assert filtered_gateway.filter_running
