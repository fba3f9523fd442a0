"""The index's own keys and its signed bundle.

- the onion key: sealed at rest with the passphrase, like every service's (unseal);
- the directory group key: made once and kept in the data dir. It is public (it is in the
  bundle: anyone may read the directory group), so it is stored plainly, but never
  replaced: a new key would be a new group, and every peer's pin would break;
- the signed IndexBundle: kept in bundle_file and re-signed only when what it says
  changes (pow bits, directory servers, group key), so pins survive restarts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nyth.healthz import onion_from_healthz
from nyth.keystore import write_private_file
from nyth.proto.discovery import IndexBundle
from nyth.proto.group import KEY_SIZE, new_group_key
from nyth.proto.identity import Identity, public_key_from_onion

from nyth_discovery.settings import DiscoverySettings

log = logging.getLogger("nyth_discovery")


class StartupError(RuntimeError):
    """The index cannot start; the message says why."""


def load_or_create_group_key(path: Path) -> bytes:
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_SIZE:
            raise StartupError(f"{path} holds {len(key)} bytes, not a {KEY_SIZE}-byte group "
                               "key; restore it from a backup (a new key is a new directory "
                               "group, which breaks every peer's pin)")
        return key
    key = new_group_key()
    write_private_file(path, key)
    return key


async def directory_onions(settings: DiscoverySettings) -> list[str]:
    """NYTH_DIRECTORY_SERVERS, then the onions the NYTH_DIRECTORY_SERVERS_HEALTHZ servers
    report (waiting for them to publish: they start alongside)."""
    onions = list(settings.directory_servers)
    for url in settings.directory_servers_healthz:
        onion = await onion_from_healthz(url, attempts=120)
        if onion is None:
            raise StartupError(f"{url} did not tell its onion within two minutes")
        if onion not in onions:
            onions.append(onion)
    return onions


def wanted_bundle(settings: DiscoverySettings, identity: Identity, group_key: bytes,
                  servers: list[str]) -> IndexBundle:
    return IndexBundle(identity.public_key, settings.advert_pow_bits, group_key,
                       int(time.time()), tuple(public_key_from_onion(o) for o in servers))


def group_key_path(settings: DiscoverySettings) -> Path:
    return settings.data_dir / settings.group_key_file
