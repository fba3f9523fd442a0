"""Pure parts of nyth.tor: endpoint parsing, SOCKS error mapping, password hashing."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nyth.errors import DecodeError
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint
from nyth.tor.gateway import hash_control_password
from nyth.tor.privnet import parse_consensus_flags, torrc_quote
from nyth.tor.publisher import PublisherStatus, _RedactOnionKeys, resolve_target
from nyth.tor.socks import (
    TOR_EXTENDED_REPLIES,
    OnionConnectError,
    describe_socks_reply,
    onion_connect_error,
    socks_reply_code,
)
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
from python_socks._protocols import socks5
from python_socks._protocols.errors import ReplyError

SOCKS = SocksEndpoint("127.0.0.1", 9050)
TARGET = "x" * 56 + ".onion:80"


# -- endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9050", "127.0.0.1", 9050),
        (" tor-gateway:9050 ", "tor-gateway", 9050),
        ("[::1]:9150", "::1", 9150),
        ("localhost:1", "localhost", 1),
        ("h:65535", "h", 65535),
    ],
)
def test_socks_endpoint_parses(text: str, host: str, port: int) -> None:
    assert SocksEndpoint.from_string(text) == SocksEndpoint(host, port)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "127.0.0.1",
        ":9050",
        "host:",
        "host:port",
        "host:0",
        "host:65536",
        "host:-1",
        "host:+80",
        "::1:9050",
        "[::1]9050",
        "[::1",
        "a b:80",
        "user@host:80",
        "http://host:80",
        "host:80/path",
    ],
)
def test_endpoint_rejects_bad_input(text: str) -> None:
    with pytest.raises(DecodeError):
        SocksEndpoint.from_string(text)
    with pytest.raises(DecodeError):
        ControlEndpoint.from_string(text)


def test_endpoint_rejects_non_string() -> None:
    with pytest.raises(DecodeError):
        SocksEndpoint.from_string(cast(Any, 9050))


def test_endpoint_constructor_validates() -> None:
    with pytest.raises(DecodeError):
        SocksEndpoint("", 9050)
    with pytest.raises(DecodeError):
        ControlEndpoint("127.0.0.1", 0)
    with pytest.raises(DecodeError):
        SocksEndpoint("127.0.0.1", True)


def test_control_endpoint_password_not_in_repr_or_str() -> None:
    endpoint = ControlEndpoint.from_string("127.0.0.1:9051", password="hunter2")
    assert endpoint == ControlEndpoint("127.0.0.1", 9051, "hunter2")
    assert "hunter2" not in repr(endpoint)
    assert str(endpoint) == "127.0.0.1:9051"
    assert str(SocksEndpoint("::1", 9050)) == "[::1]:9050"


def test_endpoints_round_trip_through_str() -> None:
    for endpoint in (SocksEndpoint("10.0.0.2", 9050), SocksEndpoint("::1", 1)):
        assert SocksEndpoint.from_string(str(endpoint)) == endpoint


# -- SOCKS error mapping -----------------------------------------------------------


def _python_socks_error_for_reply(code: int) -> ProxyError:
    """The exception python-socks really raises for a SOCKS5 reply with this code."""
    reply = bytes([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ReplyError) as info:
        socks5.ConnectReply.loads(reply)
    inner = info.value
    try:
        raise ProxyError(inner, error_code=inner.error_code) from inner
    except ProxyError as exc:
        return exc


@pytest.mark.parametrize("code", [*range(0x01, 0x09), *range(0xF0, 0xF8)])
def test_every_reply_code_is_recovered_and_described(code: int) -> None:
    exc = _python_socks_error_for_reply(code)
    assert socks_reply_code(exc) == code
    error = onion_connect_error(exc, socks=SOCKS, target=TARGET)
    assert error.code == code
    assert error.reason.startswith(TARGET)
    assert describe_socks_reply(code) in error.reason
    assert "unknown" not in error.reason


def test_extended_reply_reasons_are_distinct_and_specific() -> None:
    assert len(set(TOR_EXTENDED_REPLIES.values())) == 8
    assert "descriptor was not found" in describe_socks_reply(0xF0)
    assert "invalid" in describe_socks_reply(0xF1)
    assert "introduction" in describe_socks_reply(0xF2)
    assert "rendezvous" in describe_socks_reply(0xF3)
    assert "requires client authorization" in describe_socks_reply(0xF4)
    assert "rejected our client authorization" in describe_socks_reply(0xF5)
    assert "address is invalid" in describe_socks_reply(0xF6)
    assert "timed out" in describe_socks_reply(0xF7)
    assert "unknown" in describe_socks_reply(0x42)


def test_refused_socks_port_is_explained() -> None:
    exc = ProxyConnectionError(111, "Could not connect to proxy 127.0.0.1:9050 [Connection refused]")
    error = onion_connect_error(exc, socks=SOCKS, target=TARGET)
    assert error.code is None
    assert "127.0.0.1:9050" in error.reason
    assert "refused" in error.reason


def test_timeout_is_explained() -> None:
    error = onion_connect_error(ProxyTimeoutError("x"), socks=SOCKS, target=TARGET, timeout=7)
    assert error.code is None
    assert "within 7s" in error.reason
    assert TARGET in error.reason


def test_wrapped_errors_are_found_in_the_chain() -> None:
    """httpx wraps python-socks errors; the cause chain still gives the SOCKS code."""
    inner = _python_socks_error_for_reply(0xF0)
    try:
        try:
            raise inner
        except ProxyError as exc:
            raise RuntimeError("httpx.ProxyError stand-in") from exc
    except RuntimeError as outer:
        error = onion_connect_error(outer, socks=SOCKS, target=TARGET)
    assert error.code == 0xF0


def test_onion_connect_error_fields() -> None:
    error = OnionConnectError("the reason", 0xF2)
    assert error.reason == "the reason"
    assert error.code == 0xF2
    assert "0xf2" in str(error)
    assert str(OnionConnectError("plain")) == "plain"


# -- control password, torrc, consensus, logging -------------------------------------


def test_hash_control_password_matches_tor() -> None:
    # `tor --hash-password foo` (tor 0.4.9.11) printed this; the salt is its first 8 bytes.
    from_tor = "16:9B42597A46F4B60E60D2A4CF74AB1529E1591010959199F36E0A9BC0F0"
    salt = bytes.fromhex(from_tor[3:19])
    assert hash_control_password("foo", salt=salt) == from_tor
    assert hash_control_password("foo") != hash_control_password("foo")  # fresh salt


def test_torrc_quote() -> None:
    assert torrc_quote("/tmp/a b") == '"/tmp/a b"'
    assert torrc_quote('x"y\\z') == '"x\\"y\\\\z"'


def test_parse_consensus_flags() -> None:
    text = "\n".join(
        [
            "network-status-version 3 microdesc",
            "r auth0 AAAA 2038-01-01 00:00:00 127.0.0.1 5000 0",
            "m xyz",
            "s Authority Fast Guard HSDir Running Stable V2Dir Valid",
            "r relay0 BBBB 2038-01-01 00:00:00 127.0.0.1 5001 0",
            "s Fast Running Valid",
        ]
    )
    flags = parse_consensus_flags(text)
    assert flags["auth0"] >= {"Guard", "HSDir", "Running"}
    assert flags["relay0"] == {"Fast", "Running", "Valid"}


def test_stem_trace_logging_never_shows_onion_keys() -> None:
    import logging

    record = logging.LogRecord(
        "stem", 5, __file__, 1, "Sent to tor: ADD_ONION ED25519-V3:c2VjcmV0a2V5 Port=80,1", None,
        None,
    )
    assert _RedactOnionKeys().filter(record)
    assert "c2VjcmV0a2V5" not in record.getMessage()
    assert "ED25519-V3:<redacted>" in record.getMessage()


def test_publisher_status_is_a_value() -> None:
    status = PublisherStatus("unreachable", "why", 1.0, 2.0)
    assert status == PublisherStatus("unreachable", "why", 1.0, 2.0)
    with pytest.raises(AttributeError):
        setattr(status, "state", "published")  # noqa: B010 (frozen dataclass check)


def test_resolve_target_gives_tor_an_ip_literal() -> None:
    assert resolve_target("127.0.0.1:8080") == "127.0.0.1:8080"
    assert resolve_target("[::1]:8080") == "[::1]:8080"
    assert resolve_target("localhost:8080") == "127.0.0.1:8080"
