"""Where a tor gateway can be reached: its SOCKS port and its control port.

Both are plain values so that settings, CLI flags and compose files can carry them as
"host:port" strings; the parsers reject anything else with a DecodeError that says why.
Also here: `open_controller`, the one way this project opens a stem control connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

import stem
import stem.connection
import stem.control
import stem.socket

from nyth.errors import DecodeError


def _parse_host_port(text: str, what: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise DecodeError(f"{what} must be a string like 127.0.0.1:9050")
    value = text.strip()
    if not value:
        raise DecodeError(f"{what} is empty; expected host:port")
    if value.startswith("["):
        # Bracketed IPv6 ("[::1]:9050") is the only form in which a host may hold colons.
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise DecodeError(f"{what} {text!r}: expected [ipv6]:port")
        host, port_text = value[1:end], value[end + 2 :]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise DecodeError(f"{what} {text!r} has no port; expected host:port")
        if ":" in host:
            raise DecodeError(f"{what} {text!r}: write IPv6 hosts as [addr]:port")
    if not host:
        raise DecodeError(f"{what} {text!r} has no host; expected host:port")
    if any(ch.isspace() or ch in "/@?#" for ch in host):
        raise DecodeError(f"{what} {text!r}: host {host!r} is not a hostname or address")
    if not port_text.isdigit():
        raise DecodeError(f"{what} {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise DecodeError(f"{what} {text!r}: port {port} is outside 1-65535")
    return host, port


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check(host: str, port: int, what: str) -> None:
    if not isinstance(host, str) or not host:
        raise DecodeError(f"{what} host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise DecodeError(f"{what} port must be an integer in 1-65535, got {port!r}")


@dataclass(frozen=True)
class SocksEndpoint:
    """A tor SOCKS5 port (outbound connections to onions)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        _check(self.host, self.port, "SOCKS endpoint")

    @classmethod
    def from_string(cls, text: str) -> SocksEndpoint:
        """Parse "host:port" (or "[ipv6]:port"); raises DecodeError."""
        host, port = _parse_host_port(text, "SOCKS endpoint")
        return cls(host, port)

    def __str__(self) -> str:
        return _format_host_port(self.host, self.port)


@dataclass(frozen=True)
class ControlEndpoint:
    """A tor control port and the password that opens it (None: no auth or cookie)."""

    host: str
    port: int
    # Kept out of repr so that logging an endpoint never prints the password.
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check(self.host, self.port, "control endpoint")

    @classmethod
    def from_string(cls, text: str, password: str | None = None) -> ControlEndpoint:
        """Parse "host:port" (or "[ipv6]:port"); raises DecodeError. The password never
        travels in the same string: it comes from a secret, not from a URL-ish setting."""
        host, port = _parse_host_port(text, "control endpoint")
        return cls(host, port, password)

    def __str__(self) -> str:
        return _format_host_port(self.host, self.port)


class ControlConnectError(ConnectionError):
    """Could not open or authenticate a control connection; str() is a readable reason."""


class _NonOwningController(stem.control.Controller):
    """A stem Controller that never sends TAKEOWNERSHIP.

    stem takes ownership of tor when tor's `__OwningControllerProcess` equals our pid, and
    then tor exits as soon as that control connection closes. Our launcher (same pid in
    tests and dev mode) sets that option on every tor it starts, so without this a
    publisher closing its controller would stop the whole gateway.
    """

    def _post_authentication(self) -> None:
        # Skips Controller._post_authentication (listener re-attach + TAKEOWNERSHIP); we
        # never re-authenticate a controller, so the re-attach part is not needed either.
        stem.control.BaseController._post_authentication(self)


class _ControlPort(stem.socket.ControlPort):
    """stem's ControlPort with a connect timeout and name resolution.

    stem 1.8 connects with a blocking AF_INET socket and no timeout: hostnames (compose
    service names) and IPv6 fail, and a black-holed host hangs forever.
    """

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._raw_socket: socket.socket | None = None
        self._aborted = False
        super().__init__(host, port, connect=False)
        self.connect()

    def _make_socket(self) -> socket.socket:
        if self._aborted:
            # stem reconnects by itself when PROTOCOLINFO fails; after abort() it must not.
            raise stem.SocketError("connection aborted")
        try:
            sock = socket.create_connection((self.address, self.port), self._connect_timeout)
        except OSError as exc:
            raise stem.SocketError(exc) from exc
        # The timeout was for connecting only: stem's reader thread blocks on recv for as
        # long as the connection lives, and a timeout there would look like tor closing it.
        sock.settimeout(None)
        self._raw_socket = sock
        return sock

    def abort(self) -> None:
        """Fail every pending read and write now, from any thread.

        stem's close() would wait for the reader thread's lock, i.e. for a reply that a
        silent peer never sends; shutdown() makes that blocked recv return at once.
        """
        self._aborted = True
        if self._raw_socket is not None:
            with contextlib.suppress(OSError):
                self._raw_socket.shutdown(socket.SHUT_RDWR)


def _auth_failure(exc: BaseException, *, timed_out: bool, timeout: float) -> str:
    if timed_out:
        return f"did not answer within {timeout:g}s (is it a tor control port?)"
    if isinstance(exc, stem.connection.IncorrectPassword):
        return "rejected the control password"
    if isinstance(exc, stem.connection.MissingPassword):
        return "requires a password but none is configured"
    if isinstance(exc, stem.connection.IncorrectSocketType):
        return "is not a tor control port"
    if isinstance(exc, stem.connection.AuthenticationFailure):
        return f"refused authentication ({exc})"
    if isinstance(exc, stem.SocketError):
        return "closed the connection during authentication"
    return f"does not speak tor's control protocol ({exc})"


def open_controller(
    control: ControlEndpoint, *, connect_timeout: float = 10.0
) -> stem.control.Controller:
    """Connect and authenticate to a tor control port (blocking; call it in a thread).

    Raises ControlConnectError with a human readable reason.
    """
    where = f"tor gateway control port {control}"
    try:
        port = _ControlPort(control.host, control.port, connect_timeout)
    except stem.SocketError as exc:
        text = str(exc).lower()
        if "refused" in text:
            raise ControlConnectError(f"{where} refused the connection (is tor running?)") from exc
        if "timed out" in text:
            raise ControlConnectError(
                f"{where} did not answer within {connect_timeout:g}s"
            ) from exc
        if "name or service" in text or "nodename" in text or "resolution" in text:
            raise ControlConnectError(f"{where}: cannot resolve host {control.host!r}") from exc
        raise ControlConnectError(f"{where} is unreachable: {exc}") from exc
    controller = _NonOwningController(port)
    # stem's authenticate has no timeout either: a port that accepts but never answers
    # (not tor, or a wedged tor) would block this thread forever. Closing the controller
    # from a timer makes the pending read fail instead.
    expired = threading.Event()
    settled = threading.Lock()
    authenticated = False

    def expire() -> None:
        with settled:
            if authenticated:
                return
            expired.set()
        port.abort()

    watchdog = threading.Timer(connect_timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        controller.authenticate(password=control.password)
    except (stem.ControllerError, stem.connection.AuthenticationFailure) as exc:
        controller.close()
        reason = _auth_failure(exc, timed_out=expired.is_set(), timeout=connect_timeout)
        raise ControlConnectError(f"{where} {reason}") from exc
    finally:
        watchdog.cancel()
        with settled:
            authenticated = True
    if expired.is_set():
        # The watchdog won the race against a slow but successful authentication.
        controller.close()
        raise ControlConnectError(f"{where} did not answer within {connect_timeout:g}s")
    return controller
