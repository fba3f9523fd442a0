"""What a re-pin changes in the group service, on a real profile store: new invites carry
the re-pinned bundle (same group id), held posts become due, the refusal is lifted."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import RetryPolicy
from nyth.proto.group import Invite, new_group_key
from nyth.proto.identity import Identity
from nyth_peer.events import EventBus
from nyth_peer.groups import GroupService
from nyth_peer.messenger import Messenger
from nyth_peer.profile import Profile

SERVER = Identity.from_seed(b"G" * 32)
OTHER = Identity.from_seed(b"H" * 32)


def bundle(identity: Identity, max_age_seconds: int) -> bytes:
    return ServerBundle(identity.public_key, bytes(32), 2048, 100_000, max_age_seconds,
                        1_800_000_000).sign(identity)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_re_pin_updates_invites_and_releases_held_posts(tmp_path: Path) -> None:
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    events, retry = EventBus(), RetryPolicy()
    groups = GroupService(profile, events, Messenger(profile, events, retry),
                          lambda: httpx.AsyncClient(), retry)
    old, new, other = bundle(SERVER, 604_800), bundle(SERVER, 86_400), bundle(OTHER, 604_800)
    invite = Invite("friends", new_group_key(), (old, other))
    gid = invite.group_id.hex()
    servers = [SERVER.onion, OTHER.onion]
    profile.store.put("groups", gid, {"id": gid, "name": "friends", "key": _b64(invite.key),
                                      "servers": servers, "invite": _b64(invite.encode()),
                                      "created_at": 0.0})
    later = time.time() + 3600
    profile.store.put("group_outbox", "h", {"gid": gid, "hash": "h", "blob": "",
                                            "servers": [SERVER.onion], "attempts": 7,
                                            "next_attempt_at": later})
    groups.server_state[SERVER.onion] = {"state": "bundle_changed", "reason": "changed"}

    groups.resume(SERVER.onion, new)

    row = profile.store.get("groups", gid)
    assert row is not None
    refreshed = Invite.decode(base64.b64decode(row["invite"]))
    assert refreshed.bundles == (new, other)
    assert refreshed.group_id.hex() == gid
    held = profile.store.get("group_outbox", "h")
    assert held is not None and held["next_attempt_at"] <= time.time()
    assert groups.server_state.get(SERVER.onion, {}).get("state") != "bundle_changed"
    profile.store.close()
