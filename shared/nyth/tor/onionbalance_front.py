"""The Onionbalance front: `python -m nyth.tor.container onionbalance`.

It unseals the service's key from the service's data dir (mounted read-only; the first
replica creates it), writes it for Onionbalance onto this container's tmpfs only, lists
the instance addresses of slots 1..NYTH_ONIONBALANCE_INSTANCES (nyth.tor.onionbalance),
runs a tor of its own with a control socket, then Onionbalance on that socket. It
touches NYTH_ONIONBALANCE_READY_FILE (its healthcheck) while Onionbalance has published
the front's descriptor, and exits when tor or Onionbalance does, or when the private
network is announced anew, so the restart policy brings it back on the new one.

Settings: NYTH_ONIONBALANCE_KEY_FILE (the service's sealed key), NYTH_KEY_PASSPHRASE[_FILE],
NYTH_ONIONBALANCE_INSTANCES (default 5, at most 10), NYTH_TOR_CLIENT_TORRC_FILE (a private
network; unset on the real Tor network), NYTH_ONIONBALANCE_LOG_LEVEL (default warning).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nyth.config import ConfigError, read_secret
from nyth.errors import AuthenticationError
from nyth.keystore import load_identity
from nyth.proto.identity import Identity
from nyth.tor.onionbalance import (
    MAX_INSTANCES,
    instance_identity,
    onionbalance_config,
    pem_private_key,
)
from nyth.tor.privnet import (
    ONIONBALANCE_MIN_HSDIRS,
    ONIONBALANCE_VOTING_INTERVAL,
    TorProcess,
    announced_consensus,
    announced_lines,
    torrc_quote,
    wait_for_announced_network,
)

log = logging.getLogger("nyth.tor.onionbalance")

DEFAULT_READY_FILE = "/tmp/nyth-onionbalance-ready"  # noqa: S108 - container-private /tmp


@dataclass(frozen=True)
class FrontSettings:
    key_file: Path
    passphrase: str
    instances: int
    client_torrc: Path | None
    ready_file: Path
    log_level: str

    @classmethod
    def from_env(cls) -> FrontSettings:
        env = os.environ.get
        key_file = env("NYTH_ONIONBALANCE_KEY_FILE")
        if not key_file:
            raise ConfigError("NYTH_ONIONBALANCE_KEY_FILE (the service's sealed key) is required")
        passphrase = read_secret("key_passphrase", required=True)
        assert passphrase is not None
        try:
            instances = int(env("NYTH_ONIONBALANCE_INSTANCES", "5"))
        except ValueError as exc:
            raise ConfigError("NYTH_ONIONBALANCE_INSTANCES must be a number") from exc
        if not 1 <= instances <= MAX_INSTANCES:
            raise ConfigError(f"NYTH_ONIONBALANCE_INSTANCES must be 1..{MAX_INSTANCES}")
        level = env("NYTH_ONIONBALANCE_LOG_LEVEL", "warning")
        if level not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError("NYTH_ONIONBALANCE_LOG_LEVEL must be debug, info, warning, "
                              "error or critical")
        torrc = env("NYTH_TOR_CLIENT_TORRC_FILE")
        return cls(Path(key_file), passphrase, instances, Path(torrc) if torrc else None,
                   Path(env("NYTH_ONIONBALANCE_READY_FILE", DEFAULT_READY_FILE)), level)


def _wait_for_key(settings: FrontSettings, deadline: float) -> Identity:
    announced = False
    while True:
        try:
            return load_identity(settings.key_file, settings.passphrase)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no key at {settings.key_file}: has the service "
                                   "started once?") from None
            if not announced:
                log.info("waiting for the service to create its key (%s)", settings.key_file)
                announced = True
            time.sleep(1.0)


def _unfit_network(network: list[str]) -> str | None:
    """Why Onionbalance cannot work on this private network, if it cannot."""
    summary = announced_consensus(network)
    if summary is None:
        return "the private Tor network serves no consensus"
    if summary.voting_interval != ONIONBALANCE_VOTING_INTERVAL:
        # Onionbalance would blind the front's key for another time period than tor
        # clients use: every lookup of the front would fail, with nothing in any log.
        return (f"the private Tor network votes every {summary.voting_interval} s; "
                f"Onionbalance's testnet mode needs {ONIONBALANCE_VOTING_INTERVAL} s "
                "(NYTH_TOR_VOTING_INTERVAL of its network container)")
    if summary.hsdirs < ONIONBALANCE_MIN_HSDIRS:
        return (f"the private Tor network has {summary.hsdirs} HSDirs; Onionbalance needs "
                f"{ONIONBALANCE_MIN_HSDIRS} (NYTH_TOR_RELAYS of its network container)")
    return None


def _status(path: Path) -> dict[str, object] | None:
    """Onionbalance's status socket answer, or None while it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        answer = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _published(status: dict[str, object] | None) -> bool:
    services = status.get("services") if status else None
    return isinstance(services, list) and bool(services) and all(
        isinstance(s, dict) and s.get("publishAttemptFirstDescriptor") for s in services)


def _tor_lines(work: Path, control_socket: Path) -> list[str]:
    return [
        f"DataDirectory {torrc_quote(str(work / 'tor'))}",
        "RunAsDaemon 0",
        "Log notice stdout",
        f"__OwningControllerProcess {os.getpid()}",
        "SocksPort 0",
        "ClientOnly 1",
        # A socket in this container's private tmpfs, opened with tor's cookie: nothing
        # outside the container can reach this control port.
        f"ControlSocket {torrc_quote(str(control_socket))}",
        "CookieAuthentication 1",
    ]


def _wait_bootstrapped(tor: TorProcess, deadline: float) -> None:
    while "Bootstrapped 100%" not in tor.log_tail(300):
        if not tor.running:
            raise RuntimeError(f"tor exited with {tor.returncode}:\n{tor.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"tor did not bootstrap:\n{tor.log_tail()}")
        time.sleep(1.0)


def run_front(wait_timeout: float = 3600, bootstrap_timeout: float = 300) -> int:
    settings = FrontSettings.from_env()
    deadline = time.monotonic() + wait_timeout
    network = (wait_for_announced_network(settings.client_torrc, deadline)
               if settings.client_torrc else [])
    if network:
        problem = _unfit_network(network)
        if problem:
            log.error("%s", problem)
            return 2
    try:
        front = _wait_for_key(settings, deadline)
    except AuthenticationError:
        log.error("cannot unseal %s: wrong passphrase", settings.key_file)
        return 2
    work = Path(tempfile.mkdtemp(prefix="onionbalance-"))
    tor = TorProcess("onionbalance-tor", work / "tor",
                     _tor_lines(work, work / "control") + network)
    balancer: subprocess.Popen[bytes] | None = None
    try:
        key = work / "front.pem"
        key.touch(0o600)
        key.write_bytes(pem_private_key(front))
        onions = [instance_identity(front, slot).onion
                  for slot in range(1, settings.instances + 1)]
        (work / "config.yaml").write_text(onionbalance_config(key.name, onions))
        log.info("front %s.onion over instances %s", front.onion,
                 ", ".join(f"{n}: {onion}" for n, onion in enumerate(onions, start=1)))
        tor.start()
        _wait_bootstrapped(tor, time.monotonic() + bootstrap_timeout)
        status_socket = work / "status"
        balancer = subprocess.Popen(
            ["onionbalance", "-s", str(work / "control"), "-c", str(work / "config.yaml"),
             "-v", settings.log_level, *(["--is-testnet"] if network else [])],
            env={**os.environ, "ONIONBALANCE_STATUS_SOCKET_LOCATION": str(status_socket)},
            stdin=subprocess.DEVNULL)
        return _supervise(settings, tor, balancer, status_socket, network)
    finally:
        settings.ready_file.unlink(missing_ok=True)
        if balancer is not None and balancer.poll() is None:
            balancer.terminate()
            try:
                balancer.wait(10)
            except subprocess.TimeoutExpired:
                balancer.kill()
        tor.stop()
        shutil.rmtree(work, ignore_errors=True)


def _supervise(settings: FrontSettings, tor: TorProcess, balancer: subprocess.Popen[bytes],
               status_socket: Path, network: list[str]) -> int:
    published = False
    while True:
        if balancer.poll() is not None:
            log.error("onionbalance exited with %s", balancer.returncode)
            return 1
        if not tor.running:
            log.error("tor exited with %s:\n%s", tor.returncode, tor.log_tail())
            return 1
        if network and settings.client_torrc is not None:
            current = announced_lines(settings.client_torrc)
            if current and current != network:
                log.warning("the private Tor network was announced anew: exiting to restart")
                return 1
        now_published = _published(_status(status_socket))
        if now_published != published:
            published = now_published
            if published:
                settings.ready_file.touch()
                log.info("the front's descriptor is published")
            else:
                settings.ready_file.unlink(missing_ok=True)
        time.sleep(2.0)
