"""The control filter's decisions (sans I/O) and its asyncio relay against a fake tor."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.config import ConfigError
from nyth.proto.identity import Identity
from nyth.tor.container import connected_networks, onion_target_policy
from nyth.tor.control_filter import (
    MAX_COMMAND_LINE,
    MAX_IN_FLIGHT,
    MAX_ONIONS_PER_CONNECTION,
    REFUSAL_TEXT,
    ControlFilterProxy,
    ControlFilterSession,
    TargetPolicy,
    check_command,
)

KEY = Identity.from_seed(bytes(range(32))).tor_key_blob()
ONION = Identity.from_seed(bytes(range(32))).onion
OTHER_ONION = Identity.from_seed(bytes(32)).onion
# As the gateway container builds it: the internal `tor` network (and an IPv6 one), minus
# the gateway's own address and the host's bridge.
GATEWAY = TargetPolicy.for_networks(["172.20.0.0/16", "fd00:20::/64"],
                                    refused=["172.20.0.5", "172.20.0.1"])


def allowed(line: str, targets: TargetPolicy = GATEWAY) -> bool:
    return check_command(line.encode() + b"\r\n", targets).allowed


# Exactly what stem 1.8 sent for a publish, a removal and a NEWNYM (measured).
NYTH_SENDS = [
    "PROTOCOLINFO 1",
    'AUTHENTICATE "s3cret-Password_-"',
    'AUTHENTICATE "two  spaces \\" quote"',
    "AUTHENTICATE 0123abcd",
    "AUTHENTICATE",
    "GETINFO version",
    "GETINFO status/bootstrap-phase",
    "GETCONF hiddenservicesinglehopmode",
    "GETCONF HiddenServiceNonAnonymousMode",
    "SETEVENTS SIGNAL CONF_CHANGED STATUS_SERVER HS_DESC",
    "SETEVENTS SIGNAL CONF_CHANGED STATUS_SERVER",
    "SETEVENTS HS_DESC",
    "SETEVENTS",
    f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.1.3:8080",
    f"ADD_ONION ED25519-V3:{KEY} Flags=MaxStreamsCloseCircuit MaxStreams=16 Port=80,172.20.1.3:8080",
    f"ADD_ONION ED25519-V3:{KEY} Port=80,[fd00:20::7]:80",
    "ADD_ONION NEW:ED25519-V3 Flags=DiscardPK Port=80,172.20.0.9:1",
    f"DEL_ONION {ONION}",
    "SIGNAL NEWNYM",
    "signal NEWNYM",  # keywords are case-insensitive in tor
]


@pytest.mark.parametrize("line", NYTH_SENDS)
def test_what_nyth_sends_is_allowed(line: str) -> None:
    assert allowed(line), check_command(line.encode(), GATEWAY)


REFUSED = [
    "SETEVENTS STREAM",
    "SETEVENTS CIRC",
    "SETEVENTS HS_DESC STREAM",
    "SETEVENTS EXTENDED HS_DESC",
    "GETINFO circuit-status",
    "GETINFO stream-status",
    "GETINFO orconn-status",
    "GETINFO address",
    "GETINFO ns/all",
    "GETINFO entry-guards",
    "GETINFO onions/current",
    "GETINFO version circuit-status",
    "GETINFO",
    "GETCONF SocksPort",
    "GETCONF",
    "SETCONF SocksPort=0.0.0.0:9999",
    "RESETCONF ControlPort",
    "SAVECONF",
    "LOADCONF",
    "SIGNAL HALT",
    "SIGNAL SHUTDOWN",
    "SIGNAL RELOAD",
    "SIGNAL DUMP",
    "SIGNAL NEWNYM HALT",
    "MAPADDRESS 1.2.3.4=torproject.org",
    "EXTENDCIRCUIT 0",
    "ATTACHSTREAM 1 2",
    "REDIRECTSTREAM 1 1.2.3.4",
    "CLOSESTREAM 1 1",
    "CLOSECIRCUIT 1",
    "TAKEOWNERSHIP",
    "DROPGUARDS",
    "DROPOWNERSHIP",
    "HSFETCH " + OTHER_ONION,
    "HSPOST",
    "ONION_CLIENT_AUTH_ADD x y",
    "RESOLVE example.org",
    "USEFEATURE VERBOSE_NAMES",
    "AUTHCHALLENGE SAFECOOKIE 00",
    "QUIT",
    "AUTHENTICATE a b",
    "+LOADCONF",
    "DEL_ONION *",
    "DEL_ONION abc",
    "PROTOCOLINFO x",
    "",
    " GETINFO version",
    "GETINFO  version",
    "GETINFO version ",
    "GETINFO version\rSIGNAL HALT",
    "GETINFO version\x00",
    "GETINFO vérsion",
]


@pytest.mark.parametrize("line", REFUSED)
def test_everything_else_is_refused(line: str) -> None:
    verdict = check_command(line.encode() + b"\r\n", GATEWAY)
    assert not verdict.allowed
    assert verdict.reason
    assert verdict.refusal.startswith(f"510 {REFUSAL_TEXT}".encode())
    assert verdict.refusal.endswith(b"\r\n") and verdict.refusal.count(b"\n") == 1


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ("RSA1024:AAAA Port=80,172.20.0.9:80", "only ED25519-V3"),
        ("NEW:BEST Port=80,172.20.0.9:80", "only ED25519-V3"),
        ("NEW:RSA1024 Port=80,172.20.0.9:80", "only ED25519-V3"),
        ("ED25519-V3:short Port=80,172.20.0.9:80", "malformed"),
        (f"ED25519-V3:{KEY}", "without a Port"),
        (f"ED25519-V3:{KEY} Port=80", "explicit ip:port"),
        (f"ED25519-V3:{KEY} Port=80,127.0.0.1:9051", "local address"),
        (f"ED25519-V3:{KEY} Port=80,127.9.9.9:9050", "local address"),
        (f"ED25519-V3:{KEY} Port=80,0.0.0.0:9050", "local address"),
        (f"ED25519-V3:{KEY} Port=80,[::1]:9051", "local address"),
        (f"ED25519-V3:{KEY} Port=80,[::ffff:127.0.0.1]:9051", "local address"),
        (f"ED25519-V3:{KEY} Port=80,169.254.169.254:80", "local address"),
        (f"ED25519-V3:{KEY} Port=80,224.0.0.1:80", "local address"),
        (f"ED25519-V3:{KEY} Port=80,172.20.0.5:9050", "gateway itself"),
        (f"ED25519-V3:{KEY} Port=80,[::ffff:172.20.0.5]:9050", "gateway itself"),
        (f"ED25519-V3:{KEY} Port=80,localhost:9051", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,tor-gateway:9051", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,unix:/run/tor/control", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,::1:9051", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,172.20.0.9", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,172.20.0.9:0", "IP literal"),
        (f"ED25519-V3:{KEY} Port=80,172.20.0.9:65536", "IP literal"),
        (f"ED25519-V3:{KEY} Port=0,172.20.0.9:80", "virtual port"),
        (f"ED25519-V3:{KEY} Port=x,172.20.0.9:80", "virtual port"),
        (f"ED25519-V3:{KEY} Flags=Detach Port=80,172.20.0.9:80", "flags"),
        (f"ED25519-V3:{KEY} Flags=NonAnonymous Port=80,172.20.0.9:80", "flags"),
        (f"ED25519-V3:{KEY} Flags=V3Auth Port=80,172.20.0.9:80", "flags"),
        (f"ED25519-V3:{KEY} Flags=BasicAuth Port=80,172.20.0.9:80", "flags"),
        (f"ED25519-V3:{KEY} ClientAuth=bob Port=80,172.20.0.9:80", "option not allowed"),
        (f"ED25519-V3:{KEY} ClientAuthV3=abc Port=80,172.20.0.9:80", "option not allowed"),
        (f"ED25519-V3:{KEY} MaxStreams=0 Port=80,172.20.0.9:80", "MaxStreams"),
        (f"ED25519-V3:{KEY} MaxStreams=1 MaxStreams=2 Port=80,172.20.0.9:80", "repeats"),
        (f'ED25519-V3:{KEY} Port="80,172.20.0.9:80"', "virtual port"),
        (f"ED25519-V3:{KEY} " + " ".join(["Port=80,172.20.0.9:80"] * 9), "too many ports"),
    ],
)
def test_add_onion_rules(args: str, why: str) -> None:
    verdict = check_command(f"ADD_ONION {args}\r\n".encode(), GATEWAY)
    assert not verdict.allowed
    assert why in verdict.reason


def test_local_targets_can_be_allowed_for_tests_but_the_refused_set_still_holds() -> None:
    loose = TargetPolicy.for_networks(["127.0.0.0/8"], refused=["127.0.0.1"],
                                      refuse_local=False)
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,127.0.0.2:80", loose)
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,127.0.0.1:80", loose)
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,127.0.0.2:80", TargetPolicy())


# Finding 3 of the security review (issue 8): each of these passed, so a container holding
# the control password could make the gateway connect outside Tor (to the host, the LAN,
# an attacker's server).
@pytest.mark.parametrize("target", ["172.17.0.1:22", "192.168.1.1:80", "[fd00::1]:80",
                                    "[::ffff:192.168.1.1]:80", "8.8.8.8:53"])
def test_targets_outside_the_tor_network_are_refused(target: str) -> None:
    verdict = check_command(f"ADD_ONION ED25519-V3:{KEY} Port=80,{target}\r\n".encode(),
                            GATEWAY)
    assert not verdict.allowed
    assert "outside the onion target networks (172.20.0.0/16, fd00:20::/64)" in verdict.reason


def test_a_target_on_the_tor_network_is_accepted() -> None:
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.7:8080")
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,[::ffff:172.20.0.7]:8080")
    # One bad port spoils the command.
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.7:8080 Port=22,172.17.0.1:22")


def test_without_allowed_networks_every_target_is_refused() -> None:
    verdict = check_command(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.7:8080".encode())
    assert not verdict.allowed and "none configured" in verdict.reason


# /proc/net/route as a container on the `tor` network (172.20.0.0/16) and on another one
# (172.21.0.0/16, with the default route) prints it on a little-endian machine.
ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth1\t00000000\t010015AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000014AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    "eth1\t000015AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    "eth9\t000016AC\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    "garbage\n"
)
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="sample is little-endian")


@little_endian
def test_connected_networks_reads_the_route_table() -> None:
    assert connected_networks(ROUTES) == [ipaddress.ip_network("172.20.0.0/16"),
                                          ipaddress.ip_network("172.21.0.0/16")]


@little_endian
def test_the_gateway_allows_only_the_network_it_listens_on() -> None:
    policy = onion_target_policy("172.20.0.5", "", ROUTES, ["172.20.0.5", "172.21.0.3"])
    assert policy.allowed_networks == (ipaddress.ip_network("172.20.0.0/16"),)
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.7:8080", policy)
    for refused in ("172.21.0.9:80", "172.21.0.1:80", "172.20.0.5:9050", "172.20.0.1:22",
                    "172.17.0.1:22", "192.168.1.1:80", "[fd00::1]:80"):
        assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,{refused}", policy), refused


def test_the_setting_names_the_networks() -> None:
    policy = onion_target_policy("0.0.0.0", " 10.9.0.0/24, fd00:20::/64,10.8.0.7 ", "",
                                 ["10.9.0.2"])
    assert [str(net) for net in policy.allowed_networks] == [
        "10.9.0.0/24", "fd00:20::/64", "10.8.0.7/32"]
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,10.8.0.7:80", policy)
    assert allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,[fd00:20::9]:80", policy)
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,10.9.0.2:80", policy)
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,10.9.0.1:80", policy)
    assert not allowed(f"ADD_ONION ED25519-V3:{KEY} Port=80,10.8.0.8:80", policy)


@pytest.mark.parametrize(("listen", "setting", "why"), [
    ("0.0.0.0", "", "listens on every address"),
    ("::", "", "listens on every address"),
    ("10.99.0.5", "", "no attached network"),
    ("fd00:20::5", "", "IPv6 address"),
    ("0.0.0.0", "10.0.0.0/33", "NYTH_TOR_ONION_TARGET_NETWORKS"),
    ("0.0.0.0", "tor", "NYTH_TOR_ONION_TARGET_NETWORKS"),
])
def test_the_gateway_refuses_to_guess(listen: str, setting: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        onion_target_policy(listen, setting, ROUTES, [])


def test_line_length_is_bounded() -> None:
    long_line = b"GETINFO " + b"version " * (MAX_COMMAND_LINE // 8) + b"\r\n"
    verdict = check_command(long_line)
    assert not verdict.allowed and "too long" in verdict.reason
    assert len(f"ADD_ONION ED25519-V3:{KEY} Flags=MaxStreamsCloseCircuit MaxStreams=16 "
               "Port=80,[fd00:20::7]:65535\r\n") < 200


@given(st.binary(max_size=MAX_COMMAND_LINE + 64))
@settings(max_examples=300, deadline=None)
def test_no_line_crashes_the_filter(line: bytes) -> None:
    verdict = check_command(line, GATEWAY)
    assert verdict.allowed in (True, False)
    session = ControlFilterSession(GATEWAY)
    to_tor, to_client = session.from_client(line)
    if to_tor:
        assert to_tor.endswith(b"\r\n") and to_tor.count(b"\n") == 1
    else:
        assert to_client.startswith(b"510 ") and to_client.count(b"\n") == 1
    session.from_tor(line)


@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=200, deadline=None)
def test_no_reply_stream_crashes_the_session(lines: list[bytes]) -> None:
    session = ControlFilterSession(GATEWAY)
    session.from_client(b"GETINFO version\r\n")
    for line in lines:
        session.from_tor(line)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120))
@settings(max_examples=300, deadline=None)
def test_printable_add_onion_arguments_never_crash(args: str) -> None:
    check_command(f"ADD_ONION {args}".encode(), GATEWAY)
    check_command(f"ADD_ONION ED25519-V3:{KEY} Port=80,{args}".encode(), GATEWAY)


# -- the session: reply order, own onions, events ----------------------------------------


def _publish(session: ControlFilterSession, onion: str = ONION) -> None:
    to_tor, now = session.from_client(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.1.3:80\r\n".encode())
    assert to_tor and not now
    assert session.from_tor(f"250-ServiceID={onion}\r\n".encode())
    assert session.from_tor(b"250 OK\r\n") == b"250 OK\r\n"


def test_refusals_wait_behind_replies_tor_still_owes() -> None:
    session = ControlFilterSession(GATEWAY)
    assert session.from_client(b"GETINFO version\r\n") == (b"GETINFO version\r\n", b"")
    to_tor, now = session.from_client(b"SIGNAL HALT\r\n")
    assert to_tor == b"" and now == b""  # not before tor's answer to GETINFO
    assert session.from_tor(b"250-version=0.4.9.11\r\n") == b"250-version=0.4.9.11\r\n"
    out = session.from_tor(b"250 OK\r\n")
    assert out.startswith(b"250 OK\r\n510 ")
    # Nothing owed: a refusal goes out at once.
    assert session.from_client(b"SETCONF x=1\r\n")[1].startswith(b"510 ")


def test_lf_only_commands_reach_tor_with_crlf() -> None:
    assert ControlFilterSession().from_client(b"SIGNAL NEWNYM\n")[0] == b"SIGNAL NEWNYM\r\n"


def test_hs_desc_events_pass_only_for_own_onions() -> None:
    session = ControlFilterSession(GATEWAY)
    _publish(session)
    own = f"650 HS_DESC UPLOAD {ONION} UNKNOWN $AB~relay1 desc HSDIR_INDEX=00\r\n".encode()
    assert session.from_tor(own) == own
    uploaded = b"650 HS_DESC UPLOADED UNKNOWN UNKNOWN $AB~relay1\r\n"
    assert session.from_tor(uploaded) == uploaded
    # Another container dialling an onion: tor fetches its descriptor. Not for us.
    for action in (b"REQUESTED", b"RECEIVED", b"FAILED", b"UPLOAD", b"UPLOADED"):
        other = b"650 HS_DESC " + action + b" " + OTHER_ONION.encode() + b" NO_AUTH $AB\r\n"
        assert session.from_tor(other) == b""
    assert session.from_tor(b"650 HS_DESC REQUESTED UNKNOWN NO_AUTH $AB\r\n") == b""
    for event in (b"650 SIGNAL NEWNYM\r\n", b"650 CONF_CHANGED\r\n",
                  b"650 STREAM 1 NEW 0 x.onion:80\r\n", b"650 CIRC 1 BUILT\r\n"):
        assert session.from_tor(event) == b""


def test_multi_line_events_are_dropped_whole() -> None:
    session = ControlFilterSession(GATEWAY)
    assert session.from_tor(b"650-CONF_CHANGED\r\n") == b""
    assert session.from_tor(b"650-SocksPort=1\r\n") == b""
    assert session.from_tor(b"650 OK\r\n") == b""
    assert session.from_tor(b"650+HS_DESC_CONTENT x y z\r\n") == b""
    assert session.from_tor(b"250 OK\r\n") == b""  # inside the data block
    assert session.from_tor(b".\r\n") == b""
    assert session.from_tor(b"650 OK\r\n") == b""
    session.from_client(b"GETINFO version\r\n")
    assert session.from_tor(b"250 OK\r\n") == b"250 OK\r\n"


def test_service_ids_count_only_from_add_onion_replies() -> None:
    session = ControlFilterSession(GATEWAY)
    session.from_client(b"GETINFO version\r\n")
    session.from_tor(f"250-ServiceID={OTHER_ONION}\r\n".encode())
    session.from_tor(b"250 OK\r\n")
    assert session.onions == set()
    _publish(session)
    assert session.onions == {ONION}


def test_onions_per_connection_are_bounded() -> None:
    session = ControlFilterSession(GATEWAY)
    for _ in range(MAX_ONIONS_PER_CONNECTION):
        assert session.from_client(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.9:80\n".encode())[0]
    to_tor, _ = session.from_client(f"ADD_ONION ED25519-V3:{KEY} Port=80,172.20.0.9:80\n".encode())
    assert to_tor == b""


def test_commands_in_flight_are_bounded() -> None:
    session = ControlFilterSession(GATEWAY)
    for _ in range(MAX_IN_FLIGHT):
        session.from_client(b"GETINFO version\r\n")
    assert session.closed_reason is None
    session.from_client(b"GETINFO version\r\n")
    assert session.closed_reason is not None


# -- the asyncio relay, against a fake tor -----------------------------------------------


async def _fake_tor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 250 OK to every line, after an event nobody may see."""
    try:
        while line := await reader.readline():
            writer.write(b"650 STREAM 9 NEW 0 secret.onion:80\r\n")
            if line.startswith(b"ADD_ONION"):
                writer.write(f"250-ServiceID={ONION}\r\n".encode())
            writer.write(b"250 OK\r\n")
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _proxy(max_clients: int = 64) -> AsyncIterator[ControlFilterProxy]:
    tor = await asyncio.start_server(_fake_tor, "127.0.0.1", 0)
    proxy = ControlFilterProxy("127.0.0.1", tor.sockets[0].getsockname()[1],
                               targets=GATEWAY, max_clients=max_clients)
    await proxy.start("127.0.0.1", 0)
    try:
        yield proxy
    finally:
        await proxy.close()
        tor.close()
        await tor.wait_closed()


async def test_relay_passes_allowed_refuses_the_rest_in_order() -> None:
    async with _proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GETINFO version\r\nSETCONF a=b\r\nSIGNAL NEWNYM\r\n")
        await writer.drain()
        lines = [await asyncio.wait_for(reader.readline(), 5) for _ in range(3)]
        assert lines[0] == b"250 OK\r\n"
        assert lines[1].startswith(f"510 {REFUSAL_TEXT}".encode())
        assert lines[2] == b"250 OK\r\n"
        writer.close()


async def test_relay_hangs_up_on_an_overlong_line() -> None:
    async with _proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GETINFO " + b"x" * (MAX_COMMAND_LINE + 100) + b"\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"510 ") and b"too long" in answer
        writer.close()


async def test_relay_bounds_clients() -> None:
    async with _proxy(max_clients=1) as proxy:
        r1, w1 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w1.write(b"GETINFO version\r\n")
        assert await asyncio.wait_for(r1.readline(), 5) == b"250 OK\r\n"
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(r2.read(), 5) == b""
        w1.close()
        w2.close()


async def test_relay_closes_when_tor_is_unreachable() -> None:
    proxy = ControlFilterProxy("127.0.0.1", 1, connect_timeout=2)
    await proxy.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await proxy.close()
