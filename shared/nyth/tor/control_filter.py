"""A filtering proxy in front of tor's control port (in the manner of Whonix's onion-grater).

Every tor client container of the compose stack holds the gateway's control password so
that it can publish its own onion. Tor's control port has no per-command permissions, so
without a filter any of them could watch stream and circuit events (which onions the
peers dial), read the consensus, reconfigure or stop the gateway, or point an onion at
tor's own ports. The proxy lets through only what Nyth's own code (OnionPublisher,
forget_onion_failures, stem's connection set-up) sends; everything else is answered
`510 Command filtered by the Nyth control filter` without reaching tor, which is a valid
control-protocol reply, so stem raises a clean error.

Allowed (measured from stem 1.8 traces of a real publish and a NEWNYM):

- PROTOCOLINFO [n], AUTHENTICATE [secret]: stem's authentication. Password checking
  stays end to end with tor; the proxy never knows the password.
- GETINFO version: stem checks it before ADD_ONION / DEL_ONION / SETEVENTS.
  GETINFO status/bootstrap-phase: how far tor got (read-only, names nothing).
- GETCONF HiddenServiceSingleHopMode / HiddenServiceNonAnonymousMode: stem reads them
  before ADD_ONION to decide on the NonAnonymous flag.
- SETEVENTS with only HS_DESC, SIGNAL, CONF_CHANGED, STATUS_SERVER (or none): stem's
  Controller always subscribes to the last three for its caches; their events never
  pass (below), so subscribing to them reveals nothing.
- ADD_ONION ED25519-V3:<key> or NEW:ED25519-V3, Flags ⊆ {DiscardPK,
  MaxStreamsCloseCircuit}, MaxStreams=n, Port=virt,ip:port with an IP-literal target
  inside the allowed networks (the internal `tor` network: TargetPolicy) and not
  loopback/unspecified/link-local/multicast (tor's own SOCKS and control ports live
  there inside the gateway container) nor one of the gateway's addresses.
  No Detach (an onion must die with its connection), no client auth, no NonAnonymous.
- DEL_ONION <v3 service id>: the publisher removes its onion on the way out.
- SIGNAL NEWNYM: forget_onion_failures after a failed onion lookup.

Events from tor: only `650 HS_DESC` about an onion this connection added (or UPLOADED
without an address, which the publisher counts) pass. HS_DESC events also report
descriptor *fetches*, i.e. which onions the other containers dial; those are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REFUSAL_TEXT = "Command filtered by the Nyth control filter"
# Control-protocol lines are short: the longest we send (ADD_ONION with a 64-byte key,
# flags and one port) is under 200 bytes; tor's answers to what we allow are short too.
MAX_COMMAND_LINE = 8 * 1024
MAX_REPLY_LINE = 64 * 1024
# Commands sent to tor whose reply has not arrived yet (stem sends one at a time).
MAX_IN_FLIGHT = 32
# Onions one control connection may hold (the publisher holds one per connection).
MAX_ONIONS_PER_CONNECTION = 8
MAX_PORTS_PER_ONION = 8

ALLOWED_GETINFO = frozenset({"version", "status/bootstrap-phase"})
ALLOWED_GETCONF = frozenset({"hiddenservicesinglehopmode", "hiddenservicenonanonymousmode"})
ALLOWED_EVENTS = frozenset({"HS_DESC", "SIGNAL", "CONF_CHANGED", "STATUS_SERVER"})
ALLOWED_ONION_FLAGS = frozenset({"DiscardPK", "MaxStreamsCloseCircuit"})

_KEYWORD = re.compile(r"[A-Za-z_]{1,32}")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_ED25519_BLOB = re.compile(r"[A-Za-z0-9+/]{86}==")
_SERVICE_ID = re.compile(r"[a-z2-7]{56}")
_PORT_NUMBER = re.compile(r"[1-9][0-9]{0,4}")
_SERVICE_ID_LINE = re.compile(rb"250-ServiceID=([a-z2-7]{56})\r?\n?")


@dataclass(frozen=True)
class Verdict:
    """Whether one client command may reach tor, and why not."""

    allowed: bool
    reason: str = ""
    keyword: str = ""

    @property
    def refusal(self) -> bytes:
        return f"510 {REFUSAL_TEXT} ({self.reason})\r\n".encode("ascii", "replace")


def _allow(keyword: str) -> Verdict:
    return Verdict(True, "", keyword)


def _refuse(reason: str, keyword: str = "") -> Verdict:
    return Verdict(False, reason, keyword)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TargetPolicy:
    """Which ADD_ONION targets may be used: an allow-list, then refusals inside it.

    `allowed_networks`: the only networks a target may be in (in the compose stack the
    internal `tor` network). Anything else (the host, the LAN, the internet) would make
    tor connect outside Tor on a client's say-so and tell whoever listens there the
    gateway's real address; with no network allowed, every target is refused.
    `refused_addresses`: addresses inside those networks that are still refused (the
    gateway's own, where tor's SOCKS port listens; the host's bridge address).
    `refuse_local`: loopback, unspecified, link-local and multicast addresses (inside the
    gateway container loopback is tor itself).
    """

    allowed_networks: tuple[Network, ...] = ()
    refused_addresses: frozenset[Address] = frozenset()
    refuse_local: bool = True

    @classmethod
    def for_networks(cls, networks: Iterable[str | Network], *, refused: Iterable[str] = (),
                     refuse_local: bool = True) -> TargetPolicy:
        """Raises ValueError for a network that does not parse; host bits are allowed
        (172.20.0.5/16 means 172.20.0.0/16), as `ip addr` prints them."""
        allowed = tuple(n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
                        else ipaddress.ip_network(n.strip(), strict=False) for n in networks)
        parsed = set()
        for text in refused:
            with contextlib.suppress(ValueError):
                parsed.add(ipaddress.ip_address(text.strip("[]")))
        return cls(allowed, frozenset(parsed), refuse_local)

    def check(self, ip: Address) -> str | None:
        """Why `ip` may not be an onion target, or None."""
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # The kernel connects a v4-mapped address over IPv4: judge that address.
            candidates.append(ip.ipv4_mapped)
        for item in candidates:
            if self.refuse_local and (item.is_loopback or item.is_unspecified
                                      or item.is_link_local or item.is_multicast):
                return f"target {ip} is a local address"
            if item in self.refused_addresses:
                return f"target {ip} is the gateway itself or the host"
        effective = candidates[-1]
        if not any(effective.version == net.version and effective in net
                   for net in self.allowed_networks):
            allowed = ", ".join(str(net) for net in self.allowed_networks) or "none configured"
            return f"target {ip} is outside the onion target networks ({allowed})"
        return None


def _parse_target(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    # Only IP literals: OnionPublisher resolves names itself (resolve_target), and tor's
    # other forms (a bare port, "localhost", unix:) all mean this machine.
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None
        host, port = text[1:end], text[end + 2 :]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            return None
    if not _PORT_NUMBER.fullmatch(port) or int(port) > 65535:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip, int(port)


def check_add_onion(args: list[str], targets: TargetPolicy) -> Verdict:
    """ADD_ONION's arguments (after the keyword), as OnionPublisher sends them."""
    keyword = "ADD_ONION"
    if not args:
        return _refuse("ADD_ONION without a key", keyword)
    key = args[0]
    key_type, sep, blob = key.partition(":")
    if not sep:
        return _refuse("ADD_ONION key must be KeyType:KeyBlob", keyword)
    if key_type == "NEW":
        if blob != "ED25519-V3":
            return _refuse("ADD_ONION NEW: only ED25519-V3 keys", keyword)
    elif key_type == "ED25519-V3":
        if not _ED25519_BLOB.fullmatch(blob):
            return _refuse("ADD_ONION ED25519-V3 key blob is malformed", keyword)
    else:
        return _refuse("ADD_ONION: only ED25519-V3 keys", keyword)
    seen: set[str] = set()
    ports = 0
    for arg in args[1:]:
        name, sep, value = arg.partition("=")
        if not sep or not value:
            return _refuse("ADD_ONION arguments must be Name=Value", keyword)
        if name == "Port":
            ports += 1
            if ports > MAX_PORTS_PER_ONION:
                return _refuse("ADD_ONION has too many ports", keyword)
            virt, comma, target = value.partition(",")
            if not _PORT_NUMBER.fullmatch(virt) or int(virt) > 65535:
                return _refuse("ADD_ONION virtual port is not 1-65535", keyword)
            if not comma:
                # tor would forward to 127.0.0.1:<virt>, i.e. to the gateway itself.
                return _refuse("ADD_ONION port needs an explicit ip:port target", keyword)
            parsed = _parse_target(target)
            if parsed is None:
                return _refuse("ADD_ONION target must be an IP literal with a port", keyword)
            why = targets.check(parsed[0])
            if why is not None:
                return _refuse(f"ADD_ONION {why}", keyword)
            continue
        if name in seen:
            return _refuse(f"ADD_ONION repeats {name}", keyword)
        seen.add(name)
        if name == "Flags":
            flags = value.split(",")
            if not set(flags) <= ALLOWED_ONION_FLAGS:
                return _refuse("ADD_ONION flags other than DiscardPK, MaxStreamsCloseCircuit",
                               keyword)
        elif name == "MaxStreams":
            if not _PORT_NUMBER.fullmatch(value) or int(value) > 65535:
                return _refuse("ADD_ONION MaxStreams is not 1-65535", keyword)
        else:
            # ClientAuth, ClientAuthV3 and anything newer.
            return _refuse("ADD_ONION option not allowed", keyword)
    if not ports:
        return _refuse("ADD_ONION without a Port", keyword)
    return _allow(keyword)


def check_command(line: bytes, targets: TargetPolicy | None = None) -> Verdict:
    """Decide for one control-protocol command line (CRLF or LF included or not).

    Pure: no state, no I/O. Per-connection limits are ControlFilterSession's job.
    """
    targets = targets if targets is not None else TargetPolicy()
    if len(line) > MAX_COMMAND_LINE:
        return _refuse("line too long")
    body = line[:-1] if line.endswith(b"\n") else line
    body = body[:-1] if body.endswith(b"\r") else body
    # Printable ASCII only: a stray CR, NUL or other control byte is where parsers
    # disagree, and nothing we send contains one.
    if not _PRINTABLE.fullmatch(body):
        return _refuse("control characters or non-ASCII in the command")
    text = body.decode("ascii")
    if text.startswith("+"):
        return _refuse("multi-line commands are not allowed")
    keyword_text, _, rest = text.partition(" ")
    if not _KEYWORD.fullmatch(keyword_text):
        return _refuse("not a command keyword")
    keyword = keyword_text.upper()
    if keyword == "AUTHENTICATE":
        # Checked by tor: the proxy forwards the secret without knowing it. A quoted
        # password may hold any spacing.
        if rest.startswith('"') or " " not in rest:
            return _allow(keyword)
        return _refuse("AUTHENTICATE takes one argument", keyword)
    # One space between arguments, as stem writes them: nothing to guess about.
    args = rest.split(" ") if rest else []
    if any(not arg for arg in args):
        return _refuse("empty argument (double or trailing space)", keyword)
    if keyword == "PROTOCOLINFO":
        if all(arg.isdigit() and len(arg) <= 3 for arg in args):
            return _allow(keyword)
        return _refuse("PROTOCOLINFO takes version numbers only", keyword)
    if keyword == "GETINFO":
        if args and all(arg.lower() in ALLOWED_GETINFO for arg in args):
            return _allow(keyword)
        return _refuse("GETINFO only for version, status/bootstrap-phase", keyword)
    if keyword == "GETCONF":
        if args and all(arg.lower() in ALLOWED_GETCONF for arg in args):
            return _allow(keyword)
        return _refuse("GETCONF only for the onion service anonymity options", keyword)
    if keyword == "SETEVENTS":
        if all(arg in ALLOWED_EVENTS for arg in args):
            return _allow(keyword)
        return _refuse("SETEVENTS only for HS_DESC (and stem's SIGNAL, CONF_CHANGED, "
                       "STATUS_SERVER)", keyword)
    if keyword == "SIGNAL":
        if args == ["NEWNYM"]:
            return _allow(keyword)
        return _refuse("SIGNAL other than NEWNYM", keyword)
    if keyword == "DEL_ONION":
        if len(args) == 1 and _SERVICE_ID.fullmatch(args[0]):
            return _allow(keyword)
        return _refuse("DEL_ONION takes one v3 service id", keyword)
    if keyword == "ADD_ONION":
        return check_add_onion(args, targets)
    return _refuse(f"{keyword} is not allowed", keyword)


def _is_final(line: bytes) -> bool:
    return len(line) >= 4 and line[3:4] == b" "


def _is_data_start(line: bytes) -> bool:
    return len(line) >= 4 and line[3:4] == b"+"


def _is_data_end(line: bytes) -> bool:
    return line.rstrip(b"\r\n") == b"."


@dataclass
class ControlFilterSession:
    """The state of one proxied connection, sans I/O.

    `from_client(line)` -> (bytes for tor, bytes for the client now);
    `from_tor(line)` -> bytes for the client. Refusals are queued behind the replies
    still owed by tor, so the client sees replies in the order it sent commands.
    """

    targets: TargetPolicy = field(default_factory=TargetPolicy)
    onions: set[str] = field(default_factory=set)
    closed_reason: str | None = None
    # One entry per command still owed a reply: "tor", "add_onion" or a refusal.
    _owed: deque[str | bytes] = field(default_factory=deque, init=False, repr=False)
    _in_data: bool = field(default=False, init=False, repr=False)
    _in_reply: bool = field(default=False, init=False, repr=False)
    _passing: bool = field(default=True, init=False, repr=False)

    def from_client(self, line: bytes) -> tuple[bytes, bytes]:
        verdict = check_command(line, self.targets)
        if verdict.allowed and verdict.keyword == "ADD_ONION" and (
            len(self.onions) + sum(1 for e in self._owed if e == "add_onion")
            >= MAX_ONIONS_PER_CONNECTION
        ):
            verdict = _refuse("too many onions on one connection", "ADD_ONION")
        if len(self._owed) >= MAX_IN_FLIGHT:
            self.closed_reason = "too many commands in flight"
            return b"", b""
        if not verdict.allowed:
            log.warning("control filter refused %s: %s", verdict.keyword or "a line",
                        verdict.reason)
            if self._owed:
                self._owed.append(verdict.refusal)
                return b"", b""
            return b"", verdict.refusal
        self._owed.append("add_onion" if verdict.keyword == "ADD_ONION" else "tor")
        body = line.rstrip(b"\r\n")
        return body + b"\r\n", b""

    def from_tor(self, line: bytes) -> bytes:
        if self._in_data:
            if _is_data_end(line):
                self._in_data = False
            return line if self._passing else b""
        if not self._in_reply:
            # The first line of a message decides for all of it.
            self._passing = not line.startswith(b"6") or self._event_passes(line)
        if _is_data_start(line):
            self._in_data = True
            self._in_reply = True
            return line if self._passing else b""
        if not line.startswith(b"6") and self._owed and self._owed[0] == "add_onion":
            match = _SERVICE_ID_LINE.fullmatch(line)
            if match:
                self.onions.add(match.group(1).decode("ascii"))
        out = line if self._passing else b""
        if _is_final(line):
            self._in_reply = False
            if not line.startswith(b"6"):
                out += self._reply_done()
        else:
            self._in_reply = True
        return out

    def _reply_done(self) -> bytes:
        if self._owed and isinstance(self._owed[0], str):
            self._owed.popleft()
        flushed = b""
        while self._owed and isinstance(self._owed[0], bytes):
            refusal = self._owed.popleft()
            assert isinstance(refusal, bytes)
            flushed += refusal
        return flushed

    def _event_passes(self, line: bytes) -> bool:
        parts = line.rstrip(b"\r\n").split(b" ")
        # 650 HS_DESC Action HSAddress AuthType HsDir ...
        if len(parts) < 4 or parts[0] != b"650" or parts[1] != b"HS_DESC":
            return False
        action, address = parts[2], parts[3].decode("ascii", "replace")
        if address in self.onions:
            return True
        return action == b"UPLOADED" and address == "UNKNOWN"


# -- asyncio adapter ----------------------------------------------------------------------


class ControlFilterProxy:
    """Listens on host:port; relays each client to tor's control port through a session."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        targets: TargetPolicy | None = None,
        max_clients: int = 64,
        connect_timeout: float = 10.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.targets = targets if targets is not None else TargetPolicy()
        self.max_clients = max_clients
        self.connect_timeout = connect_timeout
        self._clients = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=MAX_COMMAND_LINE + 2
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._clients >= self.max_clients:
                log.warning("control filter: %d clients already, closing a new one",
                            self._clients)
                return
            self._clients += 1
            try:
                await self._relay(reader, writer)
            finally:
                self._clients -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                tor_reader, tor_writer = await asyncio.open_connection(
                    *self.upstream, limit=MAX_REPLY_LINE
                )
        except (OSError, TimeoutError) as exc:
            log.warning("control filter: tor's control port %s:%d unreachable: %s",
                        *self.upstream, exc)
            return
        session = ControlFilterSession(self.targets)
        to_client = asyncio.ensure_future(self._pump_tor(session, tor_reader, writer))
        try:
            await self._pump_client(session, reader, writer, tor_writer, to_client)
        finally:
            to_client.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await to_client
            tor_writer.close()
            with contextlib.suppress(Exception):
                await tor_writer.wait_closed()

    async def _pump_client(
        self,
        session: ControlFilterSession,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tor_writer: asyncio.StreamWriter,
        to_client: asyncio.Future[None],
    ) -> None:
        while not to_client.done():
            reading = asyncio.ensure_future(reader.readuntil(b"\n"))
            waiting: set[asyncio.Future[Any]] = {reading, to_client}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not reading.done():
                    # tor closed the connection (or we are being closed): so do we.
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reading
            if reading.cancelled():
                return
            try:
                line = reading.result()
            except asyncio.LimitOverrunError:
                # No way to find the next command boundary reliably: refuse and hang up.
                log.warning("control filter: a command line over %d bytes; closing",
                            MAX_COMMAND_LINE)
                writer.write(f"510 {REFUSAL_TEXT} (line too long)\r\n".encode())
                await writer.drain()
                return
            except asyncio.IncompleteReadError:
                return
            to_tor, to_now = session.from_client(line)
            if session.closed_reason is not None:
                log.warning("control filter: closing a client: %s", session.closed_reason)
                return
            if to_now:
                writer.write(to_now)
                await writer.drain()
            if to_tor:
                tor_writer.write(to_tor)
                await tor_writer.drain()

    async def _pump_tor(
        self,
        session: ControlFilterSession,
        tor_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        while True:
            try:
                line = await tor_reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            out = session.from_tor(line)
            if out:
                writer.write(out)
                await writer.drain()


class ControlFilterThread:
    """A ControlFilterProxy on its own event loop in a daemon thread, for sync callers
    (the gateway container's entry point is a plain blocking loop)."""

    def __init__(self, proxy: ControlFilterProxy, host: str, port: int) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="control-filter", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the control filter did not start listening")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.proxy.start(self.host, self.port))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self.port = self.proxy.port
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.proxy.close())
            self._loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
