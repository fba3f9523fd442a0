"""Moving a group (the owner) and following moves (every member): the peer's side of
nyth.proto.group_control.

Moving: the owner pins the new servers' bundles, seals a MOVE naming them with the next
epoch, and posts it to the old *and* the new servers; its own machine then follows it like
any member's, which re-posts the recent history (`carry`) to the new servers.

Following (a FollowMove from the group's GroupRecovery): the new servers' bundles, signed
by their onion keys and named by the owner, are pinned on first use (as an invite's are);
posts go to the new servers from now on; old servers are still read until their drain
ends (StopReading); our own messages not yet under the MOVE are re-posted to the new
servers. The invite we hand out from then on carries the new servers and epoch.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from nyth.errors import BundleChangedError, DecodeError
from nyth.proto.bundle import ServerBundle
from nyth.proto.group import MAX_EPOCH, MAX_SERVERS, Invite, Move, seal_group_move, seal_wire
from nyth.proto.group_control import GroupServers
from nyth.proto.identity import onion_from_public_key
from nyth.proto.recovery import FollowMove, Local

from nyth_peer.group_rows import GroupError, GroupForbiddenError, read_servers

if TYPE_CHECKING:
    from nyth_peer.groups import GroupService

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class GroupMoves:
    def __init__(self, groups: GroupService) -> None:
        self.groups = groups

    # -- moving (the owner) ----------------------------------------------------------------
    async def move(self, gid: str, servers: list[str]) -> dict[str, Any]:
        """Move the group to `servers` (onions, 1..8, distinct). GroupForbiddenError unless
        we own it; GroupError for a bad server list or a server we cannot pin."""
        groups = self.groups
        row = groups.group_row(gid)
        invite = Invite.decode(base64.b64decode(row["invite"]))
        me = groups.profile.identity
        if invite.owner is None:
            raise GroupForbiddenError("this group was created before moves (v1 invite): it has "
                                      "no owner, so nobody may move it")
        if invite.owner != me.public_key:
            raise GroupForbiddenError("only the group's owner may move it; its owner is "
                                      f"{onion_from_public_key(invite.owner)}.onion")
        if not 1 <= len(servers) <= MAX_SERVERS or len(set(servers)) != len(servers):
            raise GroupError(f"name 1 to {MAX_SERVERS} distinct servers")
        if set(servers) == set(row["servers"]):
            raise GroupError("the group is already on these servers")
        current = groups.recovery.servers(gid)
        epoch = (current.epoch if current is not None else invite.epoch) + 1
        if epoch > MAX_EPOCH:
            raise GroupError("the group has moved as often as its epoch allows")
        for onion in servers:
            await groups.pin_server(onion)  # GroupError if unreachable, invalid or changed
        bundles = tuple(groups.pinned_bundle(onion) for onion in servers)
        dag = groups.dag(gid)
        blob, message = seal_group_move(
            me, base64.b64decode(row["key"]), bytes.fromhex(gid),
            timestamp_ms=int(time.time() * 1000), parents=dag.heads(), move=Move(epoch, bundles))
        everywhere = list(dict.fromkeys([*row["servers"], *servers]))
        record = groups._record(message, state="queued")
        record["received_at_ms"] = groups._receipt_ms()
        record["pending_servers"] = everywhere
        groups.store.put(f"group_messages:{gid}", record["hash"], record)
        dag.add(message, record["received_at_ms"])
        # To the old servers too: members still reading only those learn of it there.
        groups.queue_blob(gid, record["hash"], blob, everywhere)
        groups.recovery.on_message(gid, message, Local())  # we follow it like anyone
        return groups.group(gid)

    # -- following (every member) ----------------------------------------------------------
    def follow(self, gid: str, action: FollowMove) -> None:
        groups = self.groups
        row = groups.group_row(gid)
        moved = action.move
        for raw in moved.bundles:
            onion = ServerBundle.verify(raw).onion
            try:
                groups._check_bundle(onion, raw)
            except BundleChangedError:
                # We pinned another bundle for it before: it is shown as changed, and
                # posts to it wait until the user re-pins (as for any server).
                log.warning("group %s… moved to %s…, whose pinned bundle differs from the "
                            "move's", gid[:8], onion[:8])
            except Exception as exc:  # unusable (e.g. another blob size): reads will say why
                log.warning("group %s… moved to %s…: %s", gid[:8], onion[:8], exc)
        invite = Invite.decode(base64.b64decode(row["invite"]))
        try:
            invite = dataclasses.replace(invite, bundles=moved.bundles, epoch=moved.epoch)
            row["invite"] = _b64(invite.encode())
        except DecodeError as exc:  # a move the invite format cannot carry: keep the old one
            log.warning("group %s…: cannot record the move in its invite: %s", gid[:8], exc)
        row["servers"] = list(moved.servers)
        row["move_hash"] = moved.move_hash.hex()
        row["draining"] = {**{o: t for o, t in (row.get("draining") or {}).items()
                              if o not in moved.servers}, **moved.draining}
        groups.put_group(row)
        for onion in moved.servers:
            groups.sync.ensure(onion)
        key = base64.b64decode(row["key"])
        me = groups.profile.identity.public_key
        for h in (*action.repost, *action.carry):
            wire = groups.receiver.wire(gid, h)
            if wire is None:
                continue  # stored before wire forms were kept: members can still pull it
            message = groups.dag(gid).get(h)
            carry = message is None or message.author != me
            groups.queue_blob(gid, h.hex(), seal_wire(key, wire), list(moved.servers),
                              carry=carry)
        groups.events.publish("group_moved", group=gid, epoch=moved.epoch,
                              servers=list(moved.servers), draining=sorted(moved.draining),
                              reposted=len(action.repost), carried=len(action.carry))
        log.info("group %s… followed move to epoch %d", gid[:8], moved.epoch)

    def save_servers(self, gid: str, servers: GroupServers) -> None:
        """After a MOVE was offered: remember the move hash learnt at the current epoch
        (a member that joined by invite learns it from the MOVE itself)."""
        row = self.groups.store.get("groups", gid)
        if row is None:
            return
        move_hash = servers.move_hash.hex() if servers.move_hash else None
        if row.get("move_hash") != move_hash:
            row["move_hash"] = move_hash
            self.groups.put_group(row)

    def stop_draining(self, gid: str, server: str) -> None:
        groups = self.groups
        row = groups.store.get("groups", gid)
        if row is None:
            return
        (row.get("draining") or {}).pop(server, None)
        groups.put_group(row)
        if not any(server in read_servers(g) for g in groups.store.list("groups")):
            groups.sync.stop_reading(server)
