"""One onion address in front of several replicas of a service, with Onionbalance.

Onionbalance (a separate program, GPL, run as a process: never imported) holds the
service's own onion key, the *front*, and publishes its descriptor with the introduction
points of several *instances*. Each instance is an ordinary onion service of its own
whose tor runs with `HiddenServiceOnionbalanceInstance 1` and knows the front's address
(`MasterOnionAddress` in `ob_config`), so it accepts introductions made to the front.
Tor offers that option only in torrc, per HiddenServiceDir, not through ADD_ONION: every
instance therefore runs its own tor (`BalancedInstance`) instead of using the gateway.

An instance's key is derived from the front's key and the instance's slot (Swarm's
`{{.Task.Slot}}`, 1..n): a replica that Swarm restarts comes back under the same instance
address, and the front can list every instance it may ever have without any registry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nyth.proto.identity import Identity
from nyth.tor.privnet import (
    TorProcess,
    announced_lines,
    torrc_quote,
    wait_for_announced_network,
)

log = logging.getLogger(__name__)

# Onionbalance puts 2 introduction points of each instance into the front's descriptor,
# and a v3 descriptor carries at most 20.
MAX_INSTANCES = 10
_INSTANCE_PERSON = b"nyth-ob-instance"
# tor's on-disk format of an expanded ed25519 secret key (hs_ed25519_secret_key).
_TOR_SECRET_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
# RFC 8410: PKCS #8 of an Ed25519 private key is this DER prefix and the 32-byte seed.
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_BOOTSTRAPPED = "Bootstrapped 100%"


def instance_identity(front: Identity, slot: int) -> Identity:
    """The key of instance `slot` of the front (1..MAX_INSTANCES)."""
    if not 1 <= slot <= MAX_INSTANCES:
        raise ValueError(f"instance slot must be 1..{MAX_INSTANCES}, not {slot}")
    seed = hashlib.blake2b(slot.to_bytes(2, "big"), key=front.seed, digest_size=32,
                           person=_INSTANCE_PERSON).digest()
    return Identity.from_seed(seed)


def tor_secret_key_file(identity: Identity) -> bytes:
    """The identity as tor's hs_ed25519_secret_key file."""
    return _TOR_SECRET_KEY_HEADER + base64.b64decode(identity.tor_key_blob())


def pem_private_key(identity: Identity) -> bytes:
    """The identity as a PKCS #8 PEM file, the format Onionbalance reads a front key in."""
    body = base64.encodebytes(_PKCS8_ED25519_PREFIX + identity.seed).decode("ascii")
    return f"-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n".encode("ascii")


def onionbalance_config(key_file: str, instance_onions: list[str]) -> str:
    """Onionbalance's config.yaml (JSON is YAML) for one front over these instances."""
    return json.dumps({"services": [{
        "key": key_file,
        "instances": [{"address": f"{onion}.onion", "name": f"instance-{n}"}
                      for n, onion in enumerate(instance_onions, start=1)],
    }]}, indent=2) + "\n"


def instance_torrc_lines(data_dir: Path, hs_dir: Path, virtual_port: int,
                         target: str) -> list[str]:
    """torrc of an instance's own tor: no SOCKS or control port, one onion service."""
    return [
        f"DataDirectory {torrc_quote(str(data_dir))}",
        "RunAsDaemon 0",
        "Log notice stdout",
        # Exits by itself when the service that launched it dies.
        f"__OwningControllerProcess {os.getpid()}",
        "SocksPort 0",
        "ClientOnly 1",
        f"HiddenServiceDir {torrc_quote(str(hs_dir))}",
        "HiddenServiceVersion 3",
        f"HiddenServicePort {virtual_port} {target}",
        "HiddenServiceOnionbalanceInstance 1",
    ]


def write_instance_hs_dir(hs_dir: Path, front: Identity, slot: int) -> Identity:
    """The instance's HiddenServiceDir: its key and the front's address (ob_config)."""
    instance = instance_identity(front, slot)
    hs_dir.mkdir(parents=True, exist_ok=True)
    hs_dir.chmod(0o700)
    secret = hs_dir / "hs_ed25519_secret_key"
    secret.write_bytes(tor_secret_key_file(instance))
    secret.chmod(0o600)
    (hs_dir / "ob_config").write_text(f"MasterOnionAddress {front.onion}.onion\n")
    return instance


@dataclass
class InstanceStatus:
    """What /healthz shows as onion_state / onion_reason (see onion_status)."""

    state: str
    reason: str | None = None


class BalancedInstance:
    """Runs this process's own tor as instance `slot` of the front `front` (the service's
    identity), for as long as the task runs; restarts it when it exits, and when a private
    network is announced anew (its client options change)."""

    def __init__(self, front: Identity, slot: int, *, virtual_port: int, target: str,
                 client_torrc_file: Path | None, restart_seconds: float = 2.0) -> None:
        self.front = front
        self.slot = slot
        self.virtual_port = virtual_port
        self.target = target
        self.client_torrc_file = client_torrc_file
        self.restart_seconds = restart_seconds
        self.onion = instance_identity(front, slot).onion
        self.status = InstanceStatus("starting", "waiting for the Tor network")

    async def run(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="nyth-instance-"))
        try:
            while True:
                await self._run_tor_once(base)
                await asyncio.sleep(self.restart_seconds)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    async def _network_lines(self) -> list[str]:
        if self.client_torrc_file is None:
            return []
        return await asyncio.to_thread(wait_for_announced_network, self.client_torrc_file,
                                       time.monotonic() + 3600)

    async def _run_tor_once(self, base: Path) -> None:
        network = await self._network_lines()
        data_dir, hs_dir = base / "tor", base / "hs"
        write_instance_hs_dir(hs_dir, self.front, self.slot)
        process = TorProcess(f"instance-{self.slot}", data_dir,
                             instance_torrc_lines(data_dir, hs_dir, self.virtual_port, self.target)
                             + network)
        process.start()
        self.status = InstanceStatus("starting", "tor is bootstrapping")
        log.info("instance %d of %s.onion: %s.onion -> %s", self.slot, self.front.onion,
                 self.onion, self.target)
        try:
            while process.running:
                if self.status.state != "up" and _BOOTSTRAPPED in process.log_tail(200):
                    self.status = InstanceStatus("up", None)
                    log.info("instance %d bootstrapped; tor publishes its descriptor", self.slot)
                if network and await self._network_lines_changed(network):
                    log.warning("the private Tor network was announced anew: restarting tor")
                    break
                await asyncio.sleep(1.0)
            else:
                self.status = InstanceStatus(
                    "down", f"tor exited with {process.returncode}; restarting")
                log.warning("instance tor exited with %s:\n%s", process.returncode,
                            process.log_tail(15))
        finally:
            await asyncio.to_thread(process.stop)

    async def _network_lines_changed(self, lines: list[str]) -> bool:
        assert self.client_torrc_file is not None
        current = announced_lines(self.client_torrc_file)
        return bool(current) and current != lines
