"""The tor gateway: one tor client process, the only door to the anonymity network.

Everything else reaches Tor through it: outbound connections via its SOCKS port, and
onion services via `ADD_ONION` on its password-protected control port. On a private
network (tests, dev mode, the default compose stack) it takes the network's options;
without one it joins the real Tor network with tor's default (safer) settings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import stem

from nyth.ports import free_port
from nyth.tor.endpoints import (
    ControlConnectError,
    ControlEndpoint,
    SocksEndpoint,
    open_controller,
)
from nyth.tor.privnet import PrivateTorNetwork, TorLaunchError, TorProcess, torrc_quote

log = logging.getLogger(__name__)

_BOOTSTRAP_PROGRESS = re.compile(r"PROGRESS=(\d+)")
_BOOTSTRAP_SUMMARY = re.compile(r'SUMMARY="([^"]*)"')
# tor's own choice for --hash-password: 65536 bytes hashed.
_S2K_SPECIFIER = 0x60


def hash_control_password(password: str, *, salt: bytes | None = None) -> str:
    """tor's HashedControlPassword value ("16:..."), as `tor --hash-password` computes it.

    Done here rather than with `tor --hash-password <pw>` so the password never shows
    up in a process list. OpenPGP iterated+salted S2K (RFC 2440 §3.6.1.3) with SHA-1.
    """
    if salt is None:
        salt = secrets.token_bytes(8)
    if len(salt) != 8:
        raise ValueError("S2K salt must be 8 bytes")
    count = (16 + (_S2K_SPECIFIER & 15)) << ((_S2K_SPECIFIER >> 4) + 6)
    material = salt + password.encode("utf-8")
    repeats, rest = divmod(count, len(material))
    digest = hashlib.sha1(material * repeats + material[:rest], usedforsecurity=False).digest()
    return "16:" + (salt + bytes([_S2K_SPECIFIER]) + digest).hex().upper()


def _connect_host(host: str) -> str:
    # A gateway bound to every interface is still reached on loopback from this host.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _torrc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TorGateway:
    """A tor client process with a SOCKS port and a password-protected control port.

    Ports chosen at construction (free ones when 0) stay the same across `restart()`,
    as does the data dir, so the gateway comes back where its users expect it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        control_password: str,
        network: PrivateTorNetwork | None = None,
        socks_port: int = 0,
        control_port: int = 0,
        host: str = "127.0.0.1",
        extra_torrc: Sequence[str] = (),
    ) -> None:
        if not control_password:
            raise ValueError("a tor gateway's control port needs a password")
        self.data_dir = Path(data_dir)
        self.host = host
        self._password = control_password
        self._network = network
        self._socks_port = socks_port or free_port(host)
        self._control_port = control_port or free_port(host)
        self._extra_torrc = list(extra_torrc)
        self._process: TorProcess | None = None
        # Seconds from launch to "Bootstrapped 100%" in the last start().
        self.bootstrap_seconds: float | None = None

    @property
    def socks(self) -> SocksEndpoint:
        return SocksEndpoint(_connect_host(self.host), self._socks_port)

    @property
    def control(self) -> ControlEndpoint:
        return ControlEndpoint(_connect_host(self.host), self._control_port, self._password)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def torrc_lines(self) -> list[str]:
        lines = [
            f"DataDirectory {torrc_quote(str(self.data_dir))}",
            "RunAsDaemon 0",
            "Log notice stdout",
            # Exits by itself if the process that launched it dies.
            f"__OwningControllerProcess {os.getpid()}",
            # A gateway is a client; it never relays other people's traffic.
            "ClientOnly 1",
            # ExtendedErrors: SOCKS replies 0xF0-0xF7 tell onion failures apart.
            f"SocksPort {_torrc_address(self.host, self._socks_port)} ExtendedErrors",
            f"ControlPort {_torrc_address(self.host, self._control_port)}",
            # A fresh salt each start; the password itself is never written anywhere.
            f"HashedControlPassword {hash_control_password(self._password)}",
            "CookieAuthentication 0",
        ]
        if self._network is not None:
            lines += self._network.client_torrc_lines()
        return lines + self._extra_torrc

    def start(self, timeout: float = 120) -> None:
        """Launch tor and block until it has bootstrapped to 100 %."""
        if self.running:
            raise RuntimeError(f"tor gateway already running (pid {self.pid})")
        self._process = TorProcess("gateway", self.data_dir, self.torrc_lines())
        began = time.monotonic()
        self._process.start()
        try:
            self._wait_bootstrapped(began + timeout)
        except BaseException:
            self._process.stop()
            raise
        self.bootstrap_seconds = time.monotonic() - began
        log.info(
            "tor gateway up in %.1fs: socks %s, control %s",
            self.bootstrap_seconds, self.socks, self.control,
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean close of circuits or control connections."""
        if self._process is not None:
            self._process.kill()

    def restart(self, timeout: float = 120) -> None:
        """Stop (if running) and start again on the same ports and data dir.

        Every ephemeral onion dies with the old process: publishers have to notice and
        publish again (OnionPublisher does).
        """
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        if self._process is None:
            return "(gateway never started)"
        return self._process.log_tail(lines)

    def __enter__(self) -> TorGateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_bootstrapped(self, deadline: float) -> None:
        assert self._process is not None
        last = "control port not open yet"
        while time.monotonic() < deadline:
            if not self._process.running:
                raise TorLaunchError(
                    f"tor gateway exited with {self._process.returncode} during startup\n"
                    + self._process.log_tail()
                )
            try:
                controller = open_controller(self.control, connect_timeout=2)
            except ControlConnectError as exc:
                last = str(exc)
                time.sleep(0.1)
                continue
            try:
                while time.monotonic() < deadline and self._process.running:
                    phase = controller.get_info("status/bootstrap-phase")
                    progress = _BOOTSTRAP_PROGRESS.search(phase)
                    summary = _BOOTSTRAP_SUMMARY.search(phase)
                    last = f"bootstrapped {progress.group(1) if progress else '?'}%" + (
                        f" ({summary.group(1)})" if summary else ""
                    )
                    if progress is not None and progress.group(1) == "100":
                        return
                    time.sleep(0.2)
            except stem.ControllerError as exc:
                last = f"control connection failed: {exc}"
            finally:
                controller.close()
        raise TorLaunchError(
            f"tor gateway did not bootstrap before the deadline ({last})\n"
            + (self._process.log_tail() if self._process else "")
        )
