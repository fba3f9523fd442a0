"""A group's stored rows and what they say: its servers and epoch, its messages as the
DAG needs them. Shared by the group service and its adapters (server_sync,
group_recovery, group_moves), which must not import each other in circles.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

from nyth.proto.group import GroupKind, GroupMessage, Invite
from nyth.proto.group_control import GroupServers


class GroupError(Exception):
    """A user request about groups that cannot be honoured."""


class GroupForbiddenError(GroupError):
    """A request this member may not make in this group (e.g. moving a group it does not own)."""



def message_from_row(row: dict[str, Any]) -> GroupMessage:
    """A stored message as the DAG needs it. Its wire form (b"" for rows stored before it
    was kept, which cannot be served to members) is not verified again: it was on receipt,
    and the store is authenticated."""
    wire = base64.b64decode(row["wire"]) if row.get("wire") else b""
    kind = row.get("kind", GroupKind.TEXT)
    with contextlib.suppress(ValueError):
        kind = GroupKind(kind)
    return GroupMessage(bytes.fromhex(row["author"]), row["timestamp_ms"],
                        tuple(bytes.fromhex(p) for p in row["parents"]), row["body"],
                        bytes.fromhex(row["hash"]), kind, None, wire)


def group_servers(row: dict[str, Any]) -> GroupServers:
    """A group's servers and epoch from its row: the invite we hand out carries the current
    servers and epoch (updated when we follow a move), the row the rest."""
    invite = Invite.decode(base64.b64decode(row["invite"]))
    move_hash = row.get("move_hash")
    return GroupServers(owner=invite.owner, bundles=invite.bundles, epoch=invite.epoch,
                        move_hash=bytes.fromhex(move_hash) if move_hash else None,
                        draining=row.get("draining") or {})


def read_servers(row: dict[str, Any]) -> list[str]:
    """The servers a group reads: its servers, and old ones draining after a move."""
    return [*row["servers"], *sorted(o for o in row.get("draining") or {} if o not in row["servers"])]
