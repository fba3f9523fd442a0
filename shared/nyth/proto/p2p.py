"""What travels inside P2P packets: messages with ids, and acks.

Byte layouts (big-endian):

    MESSAGE  0x10 | msg id (16) | kind (1) | timestamp ms (u64) | body (rest of packet data)
    ACK      0x11 | msg id (16)

The receiver acks every message id, including duplicates (the ack may have been lost),
and delivers each id to the user once. Kinds GROUP_HEADS..GROUP_NOT_SERVED carry group
sync bodies (nyth.proto.group_sync), exchanged only between members of a group; they are
fire-and-forget: never acked, never retried.
"""

from __future__ import annotations

import enum
import json
import os
import struct
from dataclasses import dataclass

from nyth.errors import DecodeError

MSG_ID_SIZE = 16
_MESSAGE, _ACK = 0x10, 0x11
_HEADER = struct.Struct(">B16sBQ")
# Packet data holds 2030 bytes (session.MAX_DATA); the 26-byte header leaves 2004, and a
# small margin stays for future header fields.
MAX_BODY = 2000
# Characters; the UTF-8 encoding must also fit MAX_BODY (checked on encode).
MAX_TEXT_CHARS = 1900
MAX_NAME_CHARS = 64


class MessageKind(enum.IntEnum):
    TEXT = 1
    CONTACT_REQUEST = 2
    CONTACT_ACCEPT = 3
    CONTACT_REFUSE = 4
    GROUP_INVITE = 5
    GROUP_HEADS = 6  # a member's heads in a group (group_sync.GroupHeads)
    GROUP_PULL = 7  # a request for group messages by hash (group_sync.GroupPull)
    GROUP_PART = 8  # (a part of) one requested group message (group_sync.GroupPart)
    GROUP_NOT_SERVED = 9  # requested hashes that will not be sent (group_sync.GroupNotServed)


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_SIZE)


@dataclass(frozen=True)
class Envelope:
    msg_id: bytes
    kind: MessageKind
    timestamp_ms: int
    body: bytes

    def __post_init__(self) -> None:
        if len(self.msg_id) != MSG_ID_SIZE:
            raise DecodeError("message id must be 16 bytes")
        if len(self.body) > MAX_BODY:
            raise DecodeError(f"message body is {len(self.body)} bytes, at most {MAX_BODY}")
        if not 0 <= self.timestamp_ms < 1 << 63:
            raise DecodeError("timestamp out of range")

    def encode(self) -> bytes:
        return _HEADER.pack(_MESSAGE, self.msg_id, self.kind, self.timestamp_ms) + self.body


@dataclass(frozen=True)
class Ack:
    msg_id: bytes

    def __post_init__(self) -> None:
        if len(self.msg_id) != MSG_ID_SIZE:
            raise DecodeError("ack id must be 16 bytes")

    def encode(self) -> bytes:
        return bytes([_ACK]) + self.msg_id


def decode_payload(data: bytes) -> Envelope | Ack:
    if not data:
        raise DecodeError("empty packet payload")
    if data[0] == _ACK:
        if len(data) != 1 + MSG_ID_SIZE:
            raise DecodeError("ack must be 17 bytes")
        return Ack(data[1:])
    if data[0] != _MESSAGE:
        raise DecodeError(f"unknown payload type 0x{data[0]:02x}")
    if len(data) < _HEADER.size:
        raise DecodeError("message header truncated")
    _type, msg_id, kind, timestamp = _HEADER.unpack_from(data)
    try:
        kind = MessageKind(kind)
    except ValueError as exc:
        raise DecodeError(f"unknown message kind {kind}") from exc
    return Envelope(msg_id, kind, timestamp, data[_HEADER.size:])


# -- bodies ----------------------------------------------------------------------------------

def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a JSON "\ud800" escape
        raise DecodeError("text is not encodable as UTF-8") from exc


def _fits(body: bytes) -> bytes:
    # Character limits alone allow up to 4 bytes per character (or 6 per JSON escape);
    # refuse here, at the caller, rather than queue a message no Envelope can carry.
    if len(body) > MAX_BODY:
        raise DecodeError(f"message body is {len(body)} bytes, at most {MAX_BODY}")
    return body


def encode_text(text: str) -> bytes:
    if not text or len(text) > MAX_TEXT_CHARS:
        raise DecodeError(f"text must be 1..{MAX_TEXT_CHARS} characters")
    return _fits(_utf8(text))


def decode_text(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("text is not valid UTF-8") from exc
    if not text or len(text) > MAX_TEXT_CHARS:
        raise DecodeError(f"text must be 1..{MAX_TEXT_CHARS} characters")
    return text


@dataclass(frozen=True)
class ContactAccept:
    """Sent by whoever accepts a contact request: their name, so the one who added them
    by onion or contact id sees a name instead of an address. An empty body (no name) is
    valid too."""

    name: str

    def encode(self) -> bytes:
        if not self.name:
            return b""
        if len(self.name) > MAX_NAME_CHARS:
            raise DecodeError("contact accept name too long")
        return _fits(_utf8(json.dumps({"name": self.name}, ensure_ascii=False)))

    @classmethod
    def decode(cls, body: bytes) -> ContactAccept:
        if not body:
            return cls("")
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise DecodeError("contact accept is not valid JSON") from exc
        if not isinstance(obj, dict) or set(obj) != {"name"} or not isinstance(obj["name"], str):
            raise DecodeError("contact accept must be exactly {\"name\": string}")
        if len(obj["name"]) > MAX_NAME_CHARS:
            raise DecodeError("contact accept name too long")
        _utf8(obj["name"])  # JSON escapes can smuggle in lone surrogates
        return cls(obj["name"])


@dataclass(frozen=True)
class ContactRequest:
    """Sent by whoever adds a contact; the callee's user accepts or refuses it."""

    name: str
    text: str

    def encode(self) -> bytes:
        if len(self.name) > MAX_NAME_CHARS or len(self.text) > MAX_TEXT_CHARS:
            raise DecodeError("contact request name or text too long")
        return _fits(_utf8(json.dumps({"name": self.name, "text": self.text},
                                      ensure_ascii=False)))

    @classmethod
    def decode(cls, body: bytes) -> ContactRequest:
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise DecodeError("contact request is not valid JSON") from exc
        if not isinstance(obj, dict) or set(obj) != {"name", "text"}:
            raise DecodeError("contact request must have exactly name and text")
        name, text = obj["name"], obj["text"]
        if not isinstance(name, str) or not isinstance(text, str):
            raise DecodeError("contact request fields must be strings")
        if len(name) > MAX_NAME_CHARS or len(text) > MAX_TEXT_CHARS:
            raise DecodeError("contact request name or text too long")
        _utf8(name + text)  # JSON escapes can smuggle in lone surrogates
        return cls(name, text)
