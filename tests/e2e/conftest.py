"""The e2e tier: build the images, bring the compose project up under a unique name,
drive the demo peers through their published APIs only, always tear down (down -v)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nyth.peer_client import PeerClient
from nyth.ports import free_port
from nyth.runtime.devnet import wait_until

from tests.fixtures.require import unavailable

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tor-network", "tor-gateway", "redis", "mailbox-redis", "discovery-redis",
            "group-server", "mailbox", "discovery", "alice", "bob")


def _compose(project: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-p", project, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine here ({exc}); ./scripts/test installs one when root")
    return client


@pytest.fixture(scope="session")
def nyth_image(docker_client: Any) -> str:
    result = subprocess.run([str(ROOT / "scripts" / "build-images")], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"image build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return "nyth:latest"


@dataclass
class E2EPeer:
    name: str
    api_url: str
    token: str
    onion: str = ""

    def client(self, timeout: float = 60.0) -> PeerClient:
        return PeerClient(self.api_url, self.token, timeout=timeout)


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    docker: Any
    peers: dict[str, E2EPeer]
    made: dict[str, str] = field(default_factory=dict)  # things tests share, made once (a group)

    def container(self, service: str) -> Any:
        found = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        assert found, f"no container for {service}"
        return found[0]

    def exec_python(self, service: str, code: str) -> str:
        result = self.container(service).exec_run(["/opt/nyth/bin/python", "-c", code])
        assert result.exit_code == 0, result.output.decode()
        return str(result.output.decode().strip())

    def group_server_onion(self) -> str:
        return self.wait_healthz("group-server", 8080, "onion_published")["onion"]

    def group_server_blob_ids(self) -> set[str]:
        """Ids of every blob the group server holds (read inside its container)."""
        code = ("import httpx;a='0';ids=[]\n"
                "while True:\n"
                " p=httpx.get('http://127.0.0.1:8080/v1/blobs',params={'after':a,'limit':1000}).json()\n"
                " ids+=[b['id'] for b in p['blobs']];a=p['next']\n"
                " if not p['more']: break\n"
                "print(' '.join(ids))")
        return set(self.exec_python("group-server", code).split())

    def wait_healthz(self, service: str, port: int, flag: str, timeout: float = 180) -> dict[str, Any]:
        code = f"import httpx,json;print(json.dumps(httpx.get('http://127.0.0.1:{port}/healthz').json()))"

        def ready() -> dict[str, Any] | None:
            health = json.loads(self.exec_python(service, code))
            return health if health.get(flag) in (True, "published") else None
        return wait_until(ready, timeout, interval=1, what=f"{service} /healthz {flag}")

    def wait_healthy(self, timeout: float = 300) -> None:
        def health() -> dict[str, str]:
            return {service: self.container(service).attrs["State"].get("Health", {}).get("Status", "none")
                    for service in SERVICES}

        wait_until(lambda: set(health().values()) == {"healthy"}, timeout, interval=2,
                   what="every service to be healthy", state=health)

    def wait_peer_online(self, peer: E2EPeer, timeout: float = 180) -> str:
        def health() -> dict[str, Any]:
            return dict(httpx.get(f"{peer.api_url}/healthz", timeout=5).json())

        def online() -> str | None:
            h = health()
            return h["onion"] if h.get("onion_state") == "published" else None
        peer.onion = wait_until(online, timeout, interval=1, what=f"{peer.name} online", state=health)
        return peer.onion

    def ensure_running(self, peer: E2EPeer) -> None:
        """Start the peer's container if a test left it stopped; wait until it is online."""
        container = self.container(peer.name)
        container.reload()
        if container.status != "running":
            container.start()
        self.wait_peer_online(peer)


# Module scope: torn down before the Swarm test's module runs, so the two private Tor
# networks never share the 2 cores.
@pytest.fixture(scope="module")
def stack(nyth_image: str, docker_client: Any) -> Iterator[Stack]:
    project = f"nyth-e2e-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NYTH_ALICE_PORT": str(free_port()), "NYTH_BOB_PORT": str(free_port()),
           "NYTH_MAILBOX_AFTER_SECONDS": "3",
           # Short, so the test does not wait minutes; what they protect is tested in
           # tests/integration/test_mailbox_unlinkable.py.
           "NYTH_MAILBOX_POST_DELAY_SECONDS": "1", "NYTH_MAILBOX_CARD_GAP_SECONDS": "3",
           # The index at test pace: servers measured within seconds, not minutes.
           "NYTH_PROBE_INTERVAL_SECONDS": "3", "NYTH_DIRECTORY_INTERVAL_SECONDS": "2",
           "NYTH_PUBLISH_INTERVAL_SECONDS": "10", "NYTH_ADVERT_POW_BITS": "10",
           "NYTH_DISCOVERY_REFRESH_SECONDS": "5"}
    up = _compose(project, "up", "-d", env=env, check=False, timeout=900)
    s = Stack(project, env, docker_client, {})
    try:
        assert up.returncode == 0, f"compose up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        s.wait_healthy()
        for name, port_var in (("alice", "NYTH_ALICE_PORT"), ("bob", "NYTH_BOB_PORT")):
            token = s.container(name).exec_run(["cat", "/data/api-token"]).output.decode().strip()
            peer = E2EPeer(name, f"http://127.0.0.1:{env[port_var]}", token)
            s.wait_peer_online(peer)
            s.peers[name] = peer
        yield s
    finally:
        logs = _compose(project, "logs", "--no-color", "--tail", "40", env=env, check=False)
        print(logs.stdout[-20000:])
        _compose(project, "down", "-v", "--remove-orphans", env=env, check=False, timeout=300)
