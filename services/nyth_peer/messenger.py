"""Contacts and P2P delivery: the outbox, acks, retries, dedup.

Outbox rows live in the profile store until the recipient acks them, so a restart
resumes every pending delivery. Received message ids are remembered per contact, so a
retried message (its ack was lost) is acked again but shown once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

from nyth.errors import NythError
from nyth.latency import LatencyBook
from nyth.proto.delivery import DeliveryState, RetryPolicy
from nyth.proto.group_sync import SYNC_KINDS
from nyth.proto.p2p import (
    ContactAccept,
    ContactRequest,
    Envelope,
    MessageKind,
    decode_text,
    encode_text,
    new_msg_id,
)
from nyth.tor.socks import OnionConnectError

from nyth_peer.events import EventBus
from nyth_peer.p2p import P2PNode
from nyth_peer.profile import Profile

log = logging.getLogger(__name__)

ACK_TIMEOUT = 60.0
MAX_HELD = 100  # messages kept from someone whose contact request is not answered yet
# Unanswered contact requests kept; past this the oldest goes (anyone can send requests
# with throwaway keys, and a full list that refused newcomers would need the user to
# clear it by hand). Worst case on disk: this many rows, times MAX_HELD held messages.
MAX_PENDING_REQUESTS = 100
# Connection states remembered for onions that are not contacts (a stranger that connects
# and has not sent a request yet): an LRU, so throwaway keys cannot grow it.
MAX_STRANGER_CONNECTIONS = 32
CONNECT_TIMEOUT = 120.0

# Contact statuses
PENDING_OUTBOUND = "pending_outbound"   # we asked; they have not answered
PENDING_INBOUND = "pending_inbound"     # they asked; our user has not answered
ACCEPTED = "accepted"
REFUSED = "refused"                     # either side said no
_NEEDS_ACCEPTED = {MessageKind.TEXT, MessageKind.GROUP_INVITE}


class ContactError(Exception):
    """A user request that cannot be honoured (unknown contact, wrong status...)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Messenger:
    def __init__(self, profile: Profile, events: EventBus, retry: RetryPolicy) -> None:
        self.profile = profile
        self.store = profile.store
        self.events = events
        self.retry = retry
        self.node: P2PNode | None = None
        self.on_invite: Any = None  # set by the group service: (onion, body) -> None
        # Set by the group service: group sync messages (onion, envelope) -> None, and P2P
        # sessions coming up or going down (onion, state) -> None, for gap recovery.
        self.on_group_sync: Any = None
        self.on_session: Any = None
        self.on_onion_failure: Any = None  # set by the engine
        self.mailbox: Any = None  # MailboxService, when our profile uses one (set by the engine)
        self.mailbox_after = 60.0  # seconds a contact must be unreachable before we use its mailbox
        self._unreachable_since: dict[str, float] = {}
        self.connection: dict[str, dict[str, Any]] = {}   # contacts only (shown in /v1/status)
        self._stranger_connection: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.dropped_requests = 0
        self._acks: dict[bytes, asyncio.Future[None]] = {}
        # Round trips of acked P2P messages per contact (in memory: a research figure and
        # a hint for the user, not state worth a disk write per ack). _sent_at holds the
        # monotonic send time of each message awaiting its ack; it has an entry exactly
        # when _acks has one, so it is bounded like the outbox.
        self.latency = LatencyBook()
        self._sent_at: dict[bytes, tuple[str, float]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, node: P2PNode) -> None:
        self.node = node
        for row in self.store.list("outbox"):
            self._kick(row["onion"])

    async def stop(self) -> None:
        for task in self._senders.values():
            task.cancel()
        await asyncio.gather(*self._senders.values(), return_exceptions=True)

    # -- contacts --------------------------------------------------------------------------
    def contacts(self) -> list[dict[str, Any]]:
        return [self._contact_view(c) for c in self.store.list("contacts")]

    def contact(self, onion: str) -> dict[str, Any]:
        row = self.store.get("contacts", onion)
        if row is None:
            raise ContactError(f"no contact {onion}.onion")
        return self._contact_view(row)

    def _contact_view(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "connection": self.connection.get(row["onion"],
                                                         {"state": "disconnected", "reason": None}),
                "latency": self.latency.summary(row["onion"])}

    def is_contact(self, onion: str) -> bool:
        """Someone our user chose: accepted, or asked by us (their answer must get
        through). The P2P node gives their sessions a budget strangers cannot exhaust."""
        row = self.store.get("contacts", onion)
        return row is not None and row["status"] in (ACCEPTED, PENDING_OUTBOUND)

    def _set_contact(self, row: dict[str, Any]) -> None:
        self.store.put("contacts", row["onion"], row)
        stranger_state = self._stranger_connection.pop(row["onion"], None)
        if stranger_state is not None:
            self.connection[row["onion"]] = stranger_state
        self.events.publish("contact", contact=self._contact_view(row))

    def add_contact(self, onion: str, text: str, mailbox: str | None = None) -> dict[str, Any]:
        """mailbox: the contact's mailbox onion, known when they were added by contact id;
        it lets requests and messages reach them while they are offline."""
        if onion == self.profile.identity.onion:
            raise ContactError("that is your own address")
        existing = self.store.get("contacts", onion)
        if existing is not None and mailbox:
            self._propose_mailbox(existing, mailbox)
        if existing is not None and existing["status"] in (ACCEPTED, PENDING_OUTBOUND):
            return self._contact_view(existing)
        request = ContactRequest(self.profile.name, text)
        with self.store.transaction():
            if existing is not None and existing["status"] == PENDING_INBOUND:
                # They asked us already: adding them back is accepting.
                existing["status"] = ACCEPTED
                self._set_contact(existing)
                self._enqueue(onion, MessageKind.CONTACT_ACCEPT, self._accept_body())
                return self._contact_view(existing)
            row = {"onion": onion, "name": None, "status": PENDING_OUTBOUND, "request_text": text,
                   "created_at": time.time(), "mailbox": mailbox}
            self._set_contact(row)
            self._enqueue(onion, MessageKind.CONTACT_REQUEST, request.encode())
        return self._contact_view(row)

    def _propose_mailbox(self, contact: dict[str, Any], mailbox: str) -> None:
        """A contact id naming a mailbox for a known contact. The first one is taken as
        given (as when adding someone new); a different one only becomes a proposal the
        user must confirm, and the stored one stays in use meanwhile: a contact id's
        mailbox is protected by a checksum only, so whoever hands out "Bob's id" with
        their own mailbox must not silently receive Bob's offline traffic."""
        current = contact.get("mailbox")
        if not current:
            contact["mailbox"] = mailbox
            contact.pop("mailbox_change", None)
        elif mailbox == current:
            return
        else:
            change = contact.get("mailbox_change")
            if change is not None and change.get("to") == mailbox:
                return
            contact["mailbox_change"] = {"from": current, "to": mailbox, "since": time.time()}
            log.warning("a contact id names another mailbox for a known contact; the stored "
                        "one stays in use until the user confirms the change")
        self._set_contact(contact)

    def confirm_mailbox(self, onion: str, mailbox: str) -> dict[str, Any]:
        """The user's answer to a proposed mailbox change: naming the proposed mailbox
        switches to it, naming the current one dismisses the proposal."""
        contact = self.store.get("contacts", onion)
        if contact is None:
            raise ContactError(f"no contact {onion}.onion")
        change = contact.get("mailbox_change")
        if change is None:
            raise ContactError("no mailbox change is waiting for confirmation for this contact")
        if mailbox not in (change["to"], change["from"]):
            raise ContactError(f"the proposed change is from {change['from']}.onion to "
                               f"{change['to']}.onion; name one of those")
        contact["mailbox"] = mailbox
        del contact["mailbox_change"]
        self._set_contact(contact)
        if mailbox == change["to"]:
            # What waited for the old mailbox may go to the new one now.
            self.resume_mailbox(mailbox)
        return self._contact_view(contact)

    def answer_request(self, onion: str, accept: bool) -> dict[str, Any]:
        row = self.store.get("contacts", onion)
        if row is None or row["status"] != PENDING_INBOUND:
            raise ContactError("no pending contact request from that address")
        held = self.store.list(f"held:{onion}")
        with self.store.transaction():
            row["status"] = ACCEPTED if accept else REFUSED
            self._set_contact(row)
            if accept:
                self._enqueue(onion, MessageKind.CONTACT_ACCEPT, self._accept_body())
            else:
                self._enqueue(onion, MessageKind.CONTACT_REFUSE, b"")
            # Messages that came with the request (through the mailbox) were held back
            # until now: shown on acceptance, dropped on refusal.
            for message in held:
                if accept:
                    self.store.put(f"messages:{onion}", message["id"], message)
                self.store.delete(f"held:{onion}", message["id"])
        if accept:
            for message in held:
                self.events.publish("message", message=message)
        return self._contact_view(row)

    def _accept_body(self) -> bytes:
        return ContactAccept(self.profile.name).encode()

    # -- sending ---------------------------------------------------------------------------
    def send_text(self, onion: str, text: str) -> dict[str, Any]:
        contact = self.store.get("contacts", onion)
        if contact is None or contact["status"] == REFUSED:
            raise ContactError("not a contact (add them first)")
        body = encode_text(text)
        return self._enqueue(onion, MessageKind.TEXT, body, text=text)

    def send_invite(self, onion: str, invite: bytes) -> dict[str, Any]:
        contact = self.store.get("contacts", onion)
        if contact is None or contact["status"] != ACCEPTED:
            raise ContactError("groups can only be shared with accepted contacts")
        return self._enqueue(onion, MessageKind.GROUP_INVITE, invite)

    def _enqueue(self, onion: str, kind: MessageKind, body: bytes,
                 text: str | None = None) -> dict[str, Any]:
        msg_id = new_msg_id().hex()
        now = time.time()
        row = {"id": msg_id, "onion": onion, "kind": kind.name.lower(), "direction": "out",
               "body": base64.b64encode(body).decode(), "text": text, "timestamp_ms": _now_ms(),
               "state": DeliveryState.QUEUED.value, "reason": None, "next_retry_at": None,
               "attempts": 0, "next_attempt_at": now, "created_at": now, "delivered_at": None,
               "via": None}
        with self.store.transaction():
            self.store.put("outbox", msg_id, row)
            if kind is MessageKind.TEXT:
                self.store.put(f"messages:{onion}", msg_id, self._public(row))
        self.events.publish("message", message=self._public(row))
        self._kick(onion)
        return self._public(row)

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        view = {k: row[k] for k in ("id", "onion", "kind", "direction", "text", "timestamp_ms",
                                    "state", "reason", "next_retry_at", "attempts",
                                    "delivered_at")}
        view["via"] = row.get("via")
        return view

    def _update(self, row: dict[str, Any], **changes: Any) -> None:
        row.update(changes)
        with self.store.transaction():
            if row["state"] in (DeliveryState.DELIVERED.value, DeliveryState.FAILED.value):
                self.store.delete("outbox", row["id"])
            else:
                self.store.put("outbox", row["id"], row)
            if row["kind"] == "text":
                self.store.put(f"messages:{row['onion']}", row["id"], self._public(row))
            contact = self.store.get("contacts", row["onion"])
            if row["kind"] == "contact_request" and contact is not None:
                # The request's own delivery state belongs on the contact, where users look.
                contact["request"] = self._public(row)
                self._set_contact(contact)
        self.events.publish("message", message=self._public(row))

    def messages(self, onion: str, limit: int = 200) -> list[dict[str, Any]]:
        if not self.store.has("contacts", onion):
            raise ContactError(f"no contact {onion}.onion")
        return self.store.list(f"messages:{onion}", limit=limit)

    def message(self, onion: str, msg_id: str) -> dict[str, Any]:
        row = self.store.get(f"messages:{onion}", msg_id)
        if row is None:
            raise ContactError("no such message")
        return row

    def retry_now(self, onion: str, msg_id: str) -> dict[str, Any]:
        row = self.store.get("outbox", msg_id)
        if row is None or row["onion"] != onion:
            raise ContactError("that message is not waiting to be sent")
        self._update(row, next_attempt_at=time.time(), next_retry_at=None)
        self._kick(onion)
        return self._public(row)

    def resume_mailbox(self, mailbox: str) -> None:
        """After the user re-pinned a contact's mailbox: what waits for the contacts who
        use it is tried now, not at a retry time computed while it was refused."""
        onions = {c["onion"] for c in self.store.list("contacts") if c.get("mailbox") == mailbox}
        for row in self.store.list("outbox"):
            if row["onion"] in onions:
                self._update(row, next_attempt_at=time.time(), next_retry_at=None)
        for onion in onions:
            self._kick(onion)

    def cancel(self, onion: str, msg_id: str) -> dict[str, Any]:
        row = self.store.get("outbox", msg_id)
        if row is None or row["onion"] != onion:
            raise ContactError("that message is not waiting to be sent")
        self._update(row, state=DeliveryState.FAILED.value, reason="cancelled by you",
                     next_retry_at=None)
        return self._public(row)

    def _kick(self, onion: str) -> None:
        self._wake.setdefault(onion, asyncio.Event()).set()
        task = self._senders.get(onion)
        if (task is None or task.done()) and self.node is not None:
            self._senders[onion] = asyncio.ensure_future(self._sender(onion))

    def _eligible(self, row: dict[str, Any], status: str | None) -> bool:
        if MessageKind[row["kind"].upper()] in _NEEDS_ACCEPTED:
            return status == ACCEPTED
        return True

    async def _sender(self, onion: str) -> None:
        """Deliver onion's outbox in order, retrying with backoff until acked."""
        wake = self._wake.setdefault(onion, asyncio.Event())
        while True:
            wake.clear()
            rows = [r for r in self.store.list("outbox") if r["onion"] == onion]
            if not rows:
                return
            contact = self.store.get("contacts", onion)
            status = contact["status"] if contact else None
            now = time.time()
            waiting = [r for r in rows if not self._eligible(r, status)]
            # Once our request went to their mailbox, what we write before they answer
            # follows it there (they see it when they accept).
            by_mail = (self._mailbox_ok(contact) and status == PENDING_OUTBOUND
                       and contact is not None and contact.get("request_via") == "mailbox")
            mail_due = [r for r in waiting if by_mail and r["next_attempt_at"] <= now]
            for row in waiting:
                reason = "waiting for the contact to accept your contact request"
                if by_mail:
                    continue
                if status == REFUSED:
                    self._update(row, state=DeliveryState.FAILED.value,
                                 reason="the contact did not accept your request",
                                 next_retry_at=None)
                elif row["reason"] != reason:
                    self._update(row, reason=reason)
            due = [r for r in rows if self._eligible(r, status) and r["next_attempt_at"] <= now]
            if due:
                await self._attempt(onion, due)
                continue
            if mail_due:
                await self._retry_later(mail_due, await self._via_mailbox(onion, mail_due))
                continue
            pending = [r["next_attempt_at"] for r in rows
                       if self._eligible(r, status) or by_mail]
            timeout = max(0.05, min(pending) - now) if pending else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    async def _attempt(self, onion: str, rows: list[dict[str, Any]]) -> None:
        assert self.node is not None
        for row in rows:
            self._update(row, state=DeliveryState.SENDING.value, reason=None, next_retry_at=None)
        try:
            session = await self.node.session_for(onion, timeout=CONNECT_TIMEOUT)
            futures = []
            for row in rows:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                msg_id = bytes.fromhex(row["id"])
                self._acks[msg_id] = fut
                futures.append(fut)
                self._sent_at[msg_id] = (onion, time.monotonic())
                await session.send(Envelope(msg_id, MessageKind[row["kind"].upper()],
                                            row["timestamp_ms"], base64.b64decode(row["body"])))
            done, _ = await asyncio.wait(futures, timeout=ACK_TIMEOUT)
            failure = None if len(done) == len(futures) else (
                f"no acknowledgement from the contact within {ACK_TIMEOUT:.0f} s")
        except OnionConnectError as exc:
            failure = exc.reason
            self._unreachable_since.setdefault(onion, time.time())
            if self.on_onion_failure is not None:
                self.on_onion_failure()
        except (ConnectionError, OSError) as exc:
            failure = f"connection lost while sending: {exc}"
        except Exception as exc:
            log.exception("unexpected error while delivering to a contact")
            failure = f"internal error: {type(exc).__name__}"
        finally:
            for row in rows:
                self._acks.pop(bytes.fromhex(row["id"]), None)
                self._sent_at.pop(bytes.fromhex(row["id"]), None)
        since = self._unreachable_since.get(onion)
        if (failure and since is not None and time.time() - since >= self.mailbox_after
                and self._mailbox_ok(self.store.get("contacts", onion))):
            mail_failure = await self._via_mailbox(onion, rows)
            failure = f"{failure}; mailbox: {mail_failure}" if mail_failure else failure
        await self._retry_later(rows, failure or "not acknowledged")

    async def _retry_later(self, rows: list[dict[str, Any]], failure: str | None) -> None:
        for row in rows:
            current = self.store.get("outbox", row["id"])
            if current is None:   # acked, cancelled or delivered via the mailbox meanwhile
                continue
            attempts = current["attempts"] + 1
            delay = self.retry.delay(attempts)
            self._update(current, state=DeliveryState.QUEUED.value, attempts=attempts,
                         reason=failure or "not delivered", next_attempt_at=time.time() + delay,
                         next_retry_at=time.time() + delay)

    def _mailbox_ok(self, contact: dict[str, Any] | None) -> bool:
        return (self.mailbox is not None and contact is not None and bool(contact.get("mailbox"))
                and contact["status"] in (PENDING_OUTBOUND, ACCEPTED))

    async def _via_mailbox(self, onion: str, rows: list[dict[str, Any]]) -> str | None:
        """Post rows to the contact's mailbox; returns why some could not be, or None."""
        from nyth_peer.mailbox import MailboxError

        contact = self.store.get("contacts", onion)
        assert contact is not None
        failure = None
        for row in rows:
            current = self.store.get("outbox", row["id"])
            if current is None:
                continue
            envelope = Envelope(bytes.fromhex(row["id"]), MessageKind[row["kind"].upper()],
                                row["timestamp_ms"], base64.b64decode(row["body"]))
            try:
                await self.mailbox.send(onion, contact["mailbox"], envelope)
            except MailboxError as exc:
                failure = str(exc)
                continue
            self._update(current, state=DeliveryState.DELIVERED.value, via="mailbox",
                         reason="delivered via mailbox: the contact fetches it when online",
                         next_retry_at=None, delivered_at=time.time())
            if row["kind"] == "contact_request":
                contact["request_via"] = "mailbox"
                self._set_contact(contact)
        return failure

    # -- receiving -------------------------------------------------------------------------
    def on_ack(self, onion: str, msg_id: bytes) -> None:
        sent = self._sent_at.get(msg_id)
        if sent is not None and sent[0] == onion:
            # Only from the contact we sent to. An ack arriving after its attempt gave up
            # finds no send time (the attempt took it along): it measures no round trip.
            del self._sent_at[msg_id]
            self.latency.record(onion, (time.monotonic() - sent[1]) * 1000)
        row = self.store.get("outbox", msg_id.hex())
        if row is not None and row["onion"] == onion:
            self._update(row, state=DeliveryState.DELIVERED.value, reason=None,
                         next_retry_at=None, delivered_at=time.time())
            if row["kind"] == "contact_request":
                self.events.publish("contact_request_delivered", onion=onion)
        fut = self._acks.pop(msg_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_state(self, onion: str, state: str, reason: str | None) -> None:
        entry = {"state": state, "reason": reason, "since": time.time()}
        if onion in self.connection or self.store.has("contacts", onion):
            self.connection[onion] = entry
        else:
            self._stranger_connection[onion] = entry
            self._stranger_connection.move_to_end(onion)
            while len(self._stranger_connection) > MAX_STRANGER_CONNECTIONS:
                self._stranger_connection.popitem(last=False)
        if state == "connected":
            self._unreachable_since.pop(onion, None)
        self.events.publish("connection", onion=onion, state=state, reason=reason)
        if self.on_session is not None:
            self.on_session(onion, state)
        if state == "connected" and onion in self._wake:
            # A contact that reaches us is reachable: deliver what waits for it now.
            for row in self.store.list("outbox"):
                if row["onion"] == onion and row["state"] == DeliveryState.QUEUED.value:
                    self._update(row, next_attempt_at=time.time())
            self._kick(onion)

    async def on_message(self, onion: str, envelope: Envelope) -> bool:
        """Handle one received message; True means ack it. One transaction, so one fsync
        stands between a message and its ack, and an ack always means "stored"."""
        with self.store.transaction():
            return self._handle(onion, envelope)

    def on_mailbox_record(self, onion: str, envelope: Envelope) -> bool:
        """A message fetched from our mailbox, sealed to our card and authenticated as
        onion's (deniably: a MAC, not a signature)."""
        with self.store.transaction():
            return self._handle(onion, envelope, via_mailbox=True)

    def _handle(self, onion: str, envelope: Envelope, via_mailbox: bool = False) -> bool:
        if envelope.kind in SYNC_KINDS:
            # Group sync goes to recovery whoever sends it (members need not be contacts),
            # which answers only members. Fire-and-forget: no outbox, no "seen" row, and
            # never an ack, so a non-member learns nothing from what we make of it. Through
            # a mailbox it is meaningless (it is about sessions): consumed and dropped.
            if self.on_group_sync is not None and not via_mailbox:
                self.on_group_sync(onion, envelope)
            return via_mailbox
        seen = f"seen:{onion}"
        msg_id = envelope.msg_id.hex()
        if self.store.has(seen, msg_id):
            return True
        contact = self.store.get("contacts", onion)
        status = contact["status"] if contact else None
        kind = envelope.kind
        # Only a message that changed something is remembered as seen: handling a no-op
        # (an accept from a stranger, a malformed request) twice is harmless, and
        # remembering it would let anyone add rows that nothing prunes.
        changed = False
        try:
            if kind is MessageKind.CONTACT_REQUEST:
                request = ContactRequest.decode(envelope.body)
                if contact is None and not self._make_room_for_request():
                    return False   # unacked: the sender retries
                changed = self._on_contact_request(onion, contact, request)
            elif kind is MessageKind.CONTACT_ACCEPT:
                accepted = ContactAccept.decode(envelope.body)
                if contact is not None and status in (PENDING_OUTBOUND, ACCEPTED):
                    changed = status == PENDING_OUTBOUND
                    contact["status"] = ACCEPTED
                    # Their own name, as a request carries it (added by address, we had none).
                    if accepted.name and not contact.get("name"):
                        contact["name"] = accepted.name
                    self._set_contact(contact)
                    self._kick(onion)
            elif kind is MessageKind.CONTACT_REFUSE:
                if contact is not None and status == PENDING_OUTBOUND:
                    changed = True
                    contact["status"] = REFUSED
                    self._set_contact(contact)
                    self._kick(onion)
            elif status != ACCEPTED:
                if (via_mailbox and kind is MessageKind.TEXT and status == PENDING_INBOUND
                        and len(self.store.list(f"held:{onion}")) < MAX_HELD):
                    # Written with a contact request, before we accepted: hold it back
                    # (until the request is answered or dropped, which clears it).
                    self.store.put(f"held:{onion}", msg_id, self._received(onion, envelope))
                    self.store.put(seen, msg_id, {})
                    return True
                # Not (yet) a contact: unacked, so a legitimate sender retries later.
                return False
            elif kind is MessageKind.TEXT:
                row = self._received(onion, envelope, via="mailbox" if via_mailbox else "p2p")
                self.store.put(f"messages:{onion}", msg_id, row)
                self.store.put(seen, msg_id, {})
                self.events.publish("message", message=row)
                return True
            elif kind is MessageKind.GROUP_INVITE and self.on_invite is not None:
                self.on_invite(onion, envelope.body)
                changed = True
        except NythError as exc:
            # Not only DecodeError: an invite whose server bundle is badly signed raises
            # AuthenticationError. Whatever the body's defect, it is acked: unacked, the
            # sender would offer it again forever (and one bad record would stop our
            # mailbox poll at its page).
            log.info("dropping malformed %s from a contact: %s: %s", kind.name,
                     type(exc).__name__, exc)
        if changed:
            self.store.put(seen, msg_id, {})
        return True

    @staticmethod
    def _received(onion: str, envelope: Envelope, via: str = "mailbox") -> dict[str, Any]:
        return {"id": envelope.msg_id.hex(), "onion": onion, "kind": "text", "direction": "in",
                "text": decode_text(envelope.body), "timestamp_ms": envelope.timestamp_ms,
                "state": DeliveryState.DELIVERED.value, "reason": None, "next_retry_at": None,
                "attempts": 0, "delivered_at": time.time(), "via": via}

    def _on_contact_request(self, onion: str, contact: dict[str, Any] | None,
                            request: ContactRequest) -> bool:
        """True when the request changed our state (worth remembering as seen)."""
        if contact is None:
            self._set_contact({"onion": onion, "name": request.name, "status": PENDING_INBOUND,
                               "request_text": request.text, "created_at": time.time()})
            self.events.publish("contact_request", onion=onion, name=request.name,
                                text=request.text)
            return True
        contact["name"] = request.name
        if contact["status"] in (PENDING_OUTBOUND, ACCEPTED):
            # Mutual add, or they lost their state: (re)accept.
            contact["status"] = ACCEPTED
            self._set_contact(contact)
            self._enqueue(onion, MessageKind.CONTACT_ACCEPT, self._accept_body())
            return True
        self._set_contact(contact)
        return False

    def _make_room_for_request(self) -> bool:
        """Keep at most MAX_PENDING_REQUESTS unanswered requests, dropping the oldest to
        make room for a new one. A request our user already wrote to is kept; False if
        none can go, and the new request is then refused."""
        pending = [c for c in self.store.list("contacts") if c["status"] == PENDING_INBOUND]
        excess = len(pending) - MAX_PENDING_REQUESTS + 1
        if excess <= 0:
            return True
        written_to = {row["onion"] for row in self.store.list("outbox")}
        droppable = sorted((c for c in pending if c["onion"] not in written_to),
                           key=lambda c: c.get("created_at") or 0.0)
        if len(droppable) < excess:
            log.warning("contact request refused: %d unanswered requests are waiting",
                        len(pending))
            return False
        for row in droppable[:excess]:
            self._drop_request(row["onion"])
        return True

    def _drop_request(self, onion: str) -> None:
        with self.store.transaction():
            for message in self.store.list(f"held:{onion}"):
                self.store.delete(f"held:{onion}", message["id"])
            self.store.clear(f"seen:{onion}")
            self.store.delete("contacts", onion)
        self.connection.pop(onion, None)
        self.latency.forget(onion)
        self.dropped_requests += 1
        log.warning("dropped the oldest unanswered contact request: more than %d are waiting",
                    MAX_PENDING_REQUESTS)
        self.events.publish("contact_request_dropped", onion=onion,
                            reason=f"more than {MAX_PENDING_REQUESTS} unanswered contact requests")
