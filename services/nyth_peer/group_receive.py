"""Receiving a group's messages: from its servers' blobs (trial-decrypted with the key of
each group that reads the server) or from members (pulled P2P). Each is kept with its
wire form, so members can pull it from us, joins the group's DAG and is told to recovery.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from nyth.errors import AuthenticationError, NythError
from nyth.proto.group import BLOB_SIZE, GroupMessage, open_inner, trial_open
from nyth.proto.recovery import FromMember, FromServer

from nyth_peer import group_views
from nyth_peer.group_rows import read_servers

if TYPE_CHECKING:
    from nyth_peer.groups import GroupService

log = logging.getLogger(__name__)


class GroupReceiver:
    def __init__(self, groups: GroupService) -> None:
        self.groups = groups
        self._groups: list[dict[str, Any]] | None = None
        # onion -> the groups that read it: (ids, keys, ids as bytes)
        self._trial: dict[str, tuple[list[str], list[bytes], list[bytes]]] = {}

    def forget_groups(self) -> None:
        """A group row changed (a join, a move): read them again at the next blob."""
        self._groups = None
        self._trial.clear()

    def _groups_on(self, onion: str) -> tuple[list[str], list[bytes], list[bytes]]:
        # Called for every blob a server sends: read (and decrypt) the group rows once,
        # again only after a join or a move changes them; decode each group's key and id
        # once too: per blob and group, that decoding cost more than the MAC check.
        found = self._trial.get(onion)
        if found is None:
            if self._groups is None:
                self._groups = self.groups.store.list("groups")
            rows = [g for g in self._groups if onion in read_servers(g)]
            found = ([g["id"] for g in rows], [base64.b64decode(g["key"]) for g in rows],
                     [bytes.fromhex(g["id"]) for g in rows])
            self._trial[onion] = found
        return found

    def ingest(self, onion: str, cursor: str, blob: bytes, *, counted: bool = True) -> None:
        if len(blob) != BLOB_SIZE:
            log.info("server %s… sent a %d-byte blob; ignored", onion[:8], len(blob))
            return
        gids, keys, raw_ids = self._groups_on(onion)
        found = trial_open(keys, blob)
        while found is not None:
            index, inner = found
            gid = gids[index]
            try:
                message = open_inner(raw_ids[index], inner)
            except AuthenticationError:
                # A forged signature: try the remaining groups, as for a key that did not fit.
                found = trial_open(keys, blob, index + 1)
                continue
            except NythError as exc:
                log.info("malformed message in group %s: %s", gid[:8], exc)
                found = trial_open(keys, blob, index + 1)
                continue
            if counted:
                self.groups.recovery.count_blob(gid)
            self.store(gid, message, {"server": onion}, FromServer(onion, cursor))
            return

    def store(self, gid: str, message: GroupMessage, origin: dict[str, str],
              source: FromServer | FromMember) -> None:
        """A message of the group from a server or a member: kept (with its wire form, so
        members can pull it from us), added to the DAG, told to recovery. Every kind joins
        the DAG: a MOVE is followed, a later version's kinds are kept as opaque nodes so
        they do not look like gaps."""
        dag = self.groups.dag(gid)
        key = f"group_messages:{gid}"
        if message.hash not in dag and not self.groups.store.has(key, message.hash.hex()):
            record = self.groups._record(message, state="received")
            record.update(origin)
            # History's order bounds each author's claimed time by when we got it.
            record["received_at_ms"] = self.groups._receipt_ms()
            self.groups.store.put(key, record["hash"], record)
            dag.add(message, record["received_at_ms"])
            self.groups.events.publish("group_message", group=gid, message=group_views.public(record))
        # Repeats too (ours coming back, a copy from another server): they tell recovery
        # where a server's stream is, and may fill a gap found meanwhile.
        self.groups.recovery.on_message(gid, message, source)

    def mark_recovered(self, gid: str, message_hash: bytes, how: dict[str, str]) -> None:
        """Remember on the message's row how it filled a gap (shown in history)."""
        key = f"group_messages:{gid}"
        row = self.groups.store.get(key, message_hash.hex())
        if row is not None:
            row["recovered_by"] = how
            self.groups.store.put(key, row["hash"], row)

    def wire(self, gid: str, message_hash: bytes) -> bytes | None:
        """A message's wire form, to serve a member's PULL; None if we do not hold it (or
        it was stored before wire forms were kept)."""
        row = self.groups.store.get(f"group_messages:{gid}", message_hash.hex())
        if row is None or not row.get("wire"):
            return None
        return base64.b64decode(row["wire"])
