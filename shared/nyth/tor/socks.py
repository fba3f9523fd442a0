"""Outbound connections to onion services through a tor gateway's SOCKS port.

Every failure becomes an OnionConnectError whose `reason` a user can read ("the onion
service is offline or not published yet"), because "why can't I reach my contact" is
the question this project has to answer well (DESIGN §7).
"""

from __future__ import annotations

import asyncio
import re

import httpx
from httpx_socks import AsyncProxyTransport
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio.v2 import Proxy
from stem import Signal

from nyth.errors import DecodeError, NythError
from nyth.proto.identity import normalize_onion, public_key_from_onion
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint, open_controller

# SOCKS5 reply codes (RFC 1928) and what tor means by them.
SOCKS5_REPLIES: dict[int, str] = {
    0x01: "tor reported a general failure (the circuit or stream failed)",
    0x02: "tor's policy does not allow this connection",
    0x03: "tor reports the network is unreachable (is the gateway connected to Tor?)",
    0x04: "tor could not reach the destination host",
    0x05: "the destination refused the connection (nothing listens on that port)",
    0x06: "tor gave up: the connection attempt timed out inside the Tor network",
    0x07: "tor does not support this SOCKS command",
    0x08: "tor does not support this address type",
}

# Tor's ExtendedErrors (socks-extensions.txt §3): onion failures told apart.
TOR_EXTENDED_REPLIES: dict[int, str] = {
    0xF0: "the onion service's descriptor was not found: the service is offline, "
    "not published yet, or the address is wrong",
    0xF1: "the onion service's descriptor is invalid (could not be parsed or verified)",
    0xF2: "the introduction to the onion service failed (it may have just restarted "
    "or gone offline)",
    0xF3: "the rendezvous with the onion service failed",
    0xF4: "the onion service requires client authorization, and none is configured",
    0xF5: "the onion service rejected our client authorization",
    0xF6: "tor says the onion address is invalid",
    0xF7: "the introduction to the onion service timed out (it may be offline or overloaded)",
}

_INVALID_REPLY = re.compile(r"Invalid reply code:\s*0x([0-9a-f]{1,2})", re.IGNORECASE)


class OnionConnectError(NythError):
    """Could not open a connection to an onion service.

    `reason` is for humans; `code` is the SOCKS5 reply code tor sent, if it sent one.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (SOCKS reply {code:#04x})")
        self.reason = reason
        self.code = code


def describe_socks_reply(code: int) -> str:
    """A human readable reason for a SOCKS5 reply code, Tor's extended ones included."""
    if code in TOR_EXTENDED_REPLIES:
        return TOR_EXTENDED_REPLIES[code]
    if code in SOCKS5_REPLIES:
        return SOCKS5_REPLIES[code]
    return f"tor answered with an unknown SOCKS reply code {code:#04x}"


def socks_reply_code(exc: BaseException) -> int | None:
    """The SOCKS reply code behind a python-socks error, if there is one.

    python-socks only knows RFC 1928 codes: for Tor's 0xF0-0xF7 it raises "Invalid
    reply code: 0XF0" without an error_code, so the code is read back from the message.
    """
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and code:
        return int(code)
    for item in (exc, exc.__cause__, exc.__context__):
        if item is None:
            continue
        match = _INVALID_REPLY.search(str(item))
        if match:
            return int(match.group(1), 16)
    return None


def onion_connect_error(
    exc: BaseException,
    *,
    socks: SocksEndpoint,
    target: str,
    timeout: float | None = None,
) -> OnionConnectError:
    """Translate a python-socks / OS / timeout error into an OnionConnectError.

    Public so that callers of `onion_http_client` can explain httpx.ProxyError and
    friends the same way (the python-socks error is in their __cause__/__context__).
    """
    chain: list[BaseException] = []
    item: BaseException | None = exc
    while item is not None and item not in chain:
        chain.append(item)
        item = item.__cause__ or item.__context__
    for item in chain:
        if isinstance(item, OnionConnectError):
            return item
        if isinstance(item, ProxyConnectionError | ConnectionRefusedError):
            return OnionConnectError(
                f"could not connect to the Tor SOCKS port {socks}: connection refused "
                "(is the tor gateway running?)"
            )
        if isinstance(item, ProxyTimeoutError | TimeoutError):
            within = f" within {timeout:g}s" if timeout is not None else ""
            return OnionConnectError(
                f"no connection to {target}{within}: the onion service may be offline, "
                "or the Tor network slow"
            )
        if isinstance(item, ProxyError):
            code = socks_reply_code(item)
            if code is not None:
                return OnionConnectError(f"{target}: {describe_socks_reply(code)}", code)
            return OnionConnectError(
                f"{target}: tor closed the SOCKS connection unexpectedly ({item})"
            )
        if isinstance(item, OSError):
            return OnionConnectError(
                f"could not use the Tor SOCKS port {socks}: {item.strerror or item}"
            )
    return OnionConnectError(f"{target}: connection failed ({exc})")


async def open_onion_connection(
    socks: SocksEndpoint,
    onion: str,
    port: int,
    *,
    timeout: float = 60,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP stream to `onion`:`port` through tor; raises OnionConnectError.

    `onion` may be a bare service id or "x.onion"; a malformed address fails here,
    before tor is asked, with a reason that says what is wrong with it.
    """
    try:
        public_key_from_onion(onion)
        host = normalize_onion(onion) + ".onion"
    except DecodeError as exc:
        raise OnionConnectError(f"not a valid onion address: {exc}") from exc
    if not 1 <= port <= 65535:
        raise OnionConnectError(f"port {port} is outside 1-65535")
    target = f"{host}:{port}"
    # rdns: tor resolves the name; resolving a .onion locally would fail (and leak).
    proxy = Proxy(ProxyType.SOCKS5, socks.host, socks.port, rdns=True)
    try:
        async with asyncio.timeout(timeout):
            stream = await proxy.connect(dest_host=host, dest_port=port, timeout=timeout)
    except Exception as exc:
        raise onion_connect_error(exc, socks=socks, target=target, timeout=timeout) from exc
    return stream.reader, stream.writer


def onion_http_client(socks: SocksEndpoint, *, timeout: float = 60, username: str | None = None,
                      password: str | None = None) -> httpx.AsyncClient:
    """An httpx client whose requests to http://<onion>.onion/... go through tor.

    username/password are sent as SOCKS5 credentials. tor does not check them: with
    IsolateSOCKSAuth (on by default) it only never lets streams with different
    credentials share a circuit, which is how callers keep unrelated requests apart.

    Connection failures surface as httpx.ProxyError / httpx.ConnectTimeout; pass them to
    `onion_connect_error` for a readable reason. The servers behind onions are untrusted:
    read their answers with `nyth.http_limits.bounded_request`, never `.json()`/`.text`.
    """
    transport = AsyncProxyTransport(
        proxy_type=ProxyType.SOCKS5,
        proxy_host=socks.host,
        proxy_port=socks.port,
        username=username,
        password=password,
        rdns=True,
    )
    # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute onion traffic.
    # identity: byte limits on answers count what arrives; a compressed body could
    # expand far beyond them before the first decoded byte is seen.
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False,
                             headers={"accept-encoding": "identity"})


async def forget_onion_failures(control: ControlEndpoint) -> None:
    """Make the gateway forget failed onion lookups (SIGNAL NEWNYM) before a retry.

    After "descriptor not found" tor avoids the HSDirs it asked for a while (minutes),
    so a retry right after the service comes online would fail the same way. NEWNYM
    clears that state; streams already open are not affected. Tor rate-limits NEWNYM to
    about one per 10 s and delays (does not refuse) the ones in between.
    """

    def newnym() -> None:
        controller = open_controller(control)
        try:
            controller.signal(Signal.NEWNYM)
        finally:
            controller.close()

    await asyncio.to_thread(newnym)
