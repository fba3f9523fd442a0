"""A whole Nyth network as local processes: redis-server, a private Tor network, a tor
gateway, group servers and peers. Used by `nyth devnet up`, the integration tests and
the benchmarks, so all three exercise the same real pieces.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nyth.keystore import load_or_create_identity, write_private_file
from nyth.peer_client import PeerClient
from nyth.ports import free_port
from nyth.proto.identity import Identity
from nyth.runtime.process import ServiceProcess
from nyth.runtime.redis_server import RedisServer
from nyth.tor.gateway import TorGateway
from nyth.tor.privnet import PrivateTorNetwork

# What the devnet's group servers run with unless told otherwise.
GROUP_SERVER_DEFAULTS = {"NYTH_TOKENS_REQUIRED": "true", "NYTH_TOKEN_POW_BITS": "12"}
# A discovery index that measures often and asks little work, so the devnet and tests see
# probes, audits and directories within seconds (production defaults: minutes to hours).
DISCOVERY_DEFAULTS = {
    "NYTH_ADVERT_POW_BITS": "8",
    "NYTH_PROBE_INTERVAL_SECONDS": "3",
    "NYTH_AUDIT_INTERVAL_SECONDS": "10",
    "NYTH_DIRECTORY_INTERVAL_SECONDS": "2",
    "NYTH_PUBLISH_INTERVAL_SECONDS": "5",
    "NYTH_ADVERT_MIN_GAP_SECONDS": "1",
}
# Key file names the services' settings use (service_onion needs them before a start).
DISCOVERY_KEY_FILE = "discovery.key"


def _secret_file(directory: Path, name: str) -> Path:
    path = directory / "secrets" / name
    if not path.exists():
        write_private_file(path, secrets.token_urlsafe(24).encode())
    return path


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition",
               state: Any = None) -> Any:
    """Poll predicate() until it returns something truthy, and return that.

    On timeout the error says what was awaited, the last error the predicate raised, and,
    when `state` (a callable) is given, what it describes now: the thing's state, reason
    and next retry, so a failure explains itself."""
    began = time.monotonic()
    deadline = began + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    message = f"timed out after {time.monotonic() - began:.0f} s waiting for {what}"
    if last_exc:
        message += f" (last error: {type(last_exc).__name__}: {last_exc})"
    if state is not None:
        try:
            message += f"; state now: {state()}"
        except Exception as exc:
            message += f"; state unknown ({type(exc).__name__}: {exc})"
    raise TimeoutError(message)


@dataclass
class PeerHandle:
    name: str
    process: ServiceProcess
    api_url: str
    token: str = field(repr=False)  # the API bearer token
    data_dir: Path
    onion: str = ""

    def client(self, timeout: float = 60.0) -> PeerClient:
        return PeerClient(self.api_url, self.token, timeout=timeout)

    def wait_online(self, timeout: float = 90.0) -> str:
        """Wait until the peer's onion is published; returns the onion."""
        def health() -> dict[str, Any]:
            return dict(httpx.get(f"{self.api_url}/healthz", timeout=5).json())

        def published() -> str | None:
            h = health()
            return h["onion"] if h.get("onion_state") == "published" else None
        self.onion = wait_until(published, timeout, what=f"{self.name}'s onion to be published",
                                state=health)
        return self.onion


@dataclass
class ServiceHandle:
    name: str
    process: ServiceProcess
    url: str
    onion: str = ""

    def wait_online(self, timeout: float = 90.0) -> str:
        def health() -> dict[str, Any]:
            return dict(httpx.get(f"{self.url}/healthz", timeout=5).json())

        def published() -> str | None:
            h = health()
            return h["onion"] if h.get("onion_published") else None
        self.onion = wait_until(published, timeout, what=f"{self.name}'s onion to be published",
                                state=health)
        return self.onion


@dataclass
class Devnet:
    """Start order: redis, Tor network, gateway, group servers, peers; stop in reverse."""

    base_dir: Path
    relays: int = 2
    network: PrivateTorNetwork | None = None     # reuse a running one (tests)
    gateway: TorGateway | None = None            # reuse a running one (tests)
    redis: RedisServer | None = None             # reuse a running one (tests)
    redis_db: int = 0                            # tests: a database of their own
    retry_cap_seconds: float = 30.0
    peers: dict[str, PeerHandle] = field(default_factory=dict)
    services: dict[str, ServiceHandle] = field(default_factory=dict)
    _owned: list[Any] = field(default_factory=list)

    def start_infrastructure(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.redis is None:
            self.redis = RedisServer(self.base_dir / "redis")
            self.redis.data_dir.mkdir(parents=True, exist_ok=True)
            self.redis.start()
            self._owned.append(self.redis)
        if self.network is None:
            self.network = PrivateTorNetwork(self.base_dir / "tor-network", relays=self.relays)
            self.network.start()
            self._owned.append(self.network)
        if self.gateway is None:
            password = secrets.token_urlsafe(16)
            self.gateway = TorGateway(self.base_dir / "tor-gateway", control_password=password,
                                      network=self.network)
            self.gateway.start()
            self._owned.append(self.gateway)

    def _tor_env(self) -> dict[str, str]:
        assert self.gateway is not None
        socks, control = self.gateway.socks, self.gateway.control
        env = {"NYTH_TOR_SOCKS": f"{socks.host}:{socks.port}",
               "NYTH_TOR_CONTROL": f"{control.host}:{control.port}"}
        if control.password:
            path = self.base_dir / "secrets" / "tor-control"
            write_private_file(path, control.password.encode())
            env["NYTH_TOR_CONTROL_PASSWORD_FILE"] = str(path)
        return env

    def add_group_server(self, name: str = "group-server", **env: str) -> ServiceHandle:
        """A group server; like the compose stack's, it wants a token per post (with
        less work per batch: tests and benchmarks pay it often). env overrides, e.g.
        NYTH_TOKENS_REQUIRED="false"."""
        return self._add_redis_service("nyth_group_server", name,
                                       {**GROUP_SERVER_DEFAULTS, **env})

    def add_mailbox(self, name: str = "mailbox", **env: str) -> ServiceHandle:
        """A mailbox service (offline first contact, FMD detection)."""
        return self._add_redis_service("nyth_mailbox", name, env)

    def add_discovery(self, name: str = "discovery", *, directory_servers: list[str],
                      **env: str) -> ServiceHandle:
        """A discovery index posting its directory into a public group on
        directory_servers (group server onions). Servers advertise to it when started with
        NYTH_DISCOVERY_INDEXES=<its onion>: `index_onion(name)` tells it before it starts."""
        return self._add_redis_service(
            "nyth_discovery", name,
            {**DISCOVERY_DEFAULTS, "NYTH_DIRECTORY_SERVERS": ",".join(directory_servers), **env})

    def index_onion(self, name: str = "discovery") -> str:
        return self.service_onion(name, DISCOVERY_KEY_FILE)

    def service_onion(self, name: str, key_file: str) -> str:
        """The onion the Redis-backed service `name` will publish, before it first starts:
        its key is made now where the service will load it (key_file: the service
        settings' name for it). For a client configured with a service that is not on the
        network yet."""
        return self.service_identity(name, key_file).onion

    def service_identity(self, name: str, key_file: str) -> Identity:
        """The onion key of the Redis-backed service `name` (made now if it has none yet):
        for tests and benchmarks that sign as the service (adverts, directories)."""
        data_dir = self.base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        passphrase = _secret_file(self.base_dir, f"{name}.passphrase").read_text()
        return load_or_create_identity(data_dir / key_file, passphrase)

    def _add_redis_service(self, module: str, name: str, env: dict[str, str]) -> ServiceHandle:
        """A Redis-backed onion service (group server, mailbox) as a real process."""
        assert self.redis is not None
        port = free_port()
        data_dir = self.base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        process = ServiceProcess.python_module(
            name, module,
            {"NYTH_DATA_DIR": str(data_dir), "NYTH_LISTEN_PORT": str(port),
             "NYTH_REDIS_URL": self.redis.url_for_db(self.redis_db), "NYTH_STREAM_KEY": f"nyth:{name}",
             "NYTH_KEY_PASSPHRASE_FILE": str(_secret_file(self.base_dir, f"{name}.passphrase")),
             **self._tor_env(), **env},
            health_url=f"http://127.0.0.1:{port}/healthz", log_path=data_dir / "service.log")
        process.start()
        self._owned.append(process)
        handle = ServiceHandle(name, process, f"http://127.0.0.1:{port}")
        self.services[name] = handle
        return handle

    def add_peer(self, name: str, **env: str) -> PeerHandle:
        port = free_port()
        data_dir = self.base_dir / "peers" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        token_file = _secret_file(self.base_dir, f"{name}.api-token")
        process = ServiceProcess.python_module(
            name, "nyth_peer",
            {"NYTH_DATA_DIR": str(data_dir), "NYTH_API_PORT": str(port),
             "NYTH_PROFILE_NAME": name, "NYTH_API_TOKEN_FILE": str(token_file),
             "NYTH_PASSPHRASE_FILE": str(_secret_file(self.base_dir, f"{name}.passphrase")),
             "NYTH_RETRY_CAP_SECONDS": str(self.retry_cap_seconds),
             **self._tor_env(), **env},
            health_url=f"http://127.0.0.1:{port}/healthz", log_path=data_dir / "service.log")
        process.start()
        self._owned.append(process)
        handle = PeerHandle(name, process, f"http://127.0.0.1:{port}",
                            token_file.read_text().strip(), data_dir)
        self.peers[name] = handle
        return handle

    def stop(self) -> None:
        for item in reversed(self._owned):
            with contextlib.suppress(Exception):
                item.stop()
        self._owned.clear()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Devnet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
