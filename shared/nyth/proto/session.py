"""P2P sessions: a 3DH handshake, then fixed-size encrypted packets (sans-IO).

Every frame on the wire is exactly PACKET_SIZE bytes, handshake included, so an observer
of the byte stream (or the onion service's host) learns only how many frames passed.

Handshake (I = caller, who knows the callee's onion and so its long-term key; R = callee):

    HELLO   I -> R   magic | 0x01 | I long-term ed25519 pk (32) | I ephemeral x25519 pk (32) | 0…
    REPLY   R -> I   magic | 0x02 | R ephemeral x25519 pk (32) | R proof (32) | 0…
    CONFIRM I -> R   magic | 0x03 | I proof (32) | 0…

    dh1 = DH(I long-term, R ephemeral)   dh2 = DH(I ephemeral, R long-term)
    dh3 = DH(I ephemeral, R ephemeral)
    th  = BLAKE2b-256(magic | I lt | I eph | R lt | R eph)
    key(label) = BLAKE2b-256(dh1 | dh2 | dh3 | th, person=label)
    proof_I = BLAKE2b-256(th, key=key("nyth-i-confirm"))   (R: "nyth-r-confirm")
    data keys: I->R key("nyth-i2r-data"), R->I key("nyth-r2i-data")

Only the holder of I's long-term key can compute dh1 and only R's can compute dh2, so a
matching proof authenticates each side to the other; the callee learns who called.

Data packets: XSalsa20-Poly1305 over (u16 length | data | zero padding), 16-byte tag,
nonce = 24-byte big-endian packet counter per direction. Nonces are never sent: a
replayed, reordered, dropped or forged packet fails authentication and ends the session.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.public

from nyth.errors import AuthenticationError, DecodeError, ProtocolError
from nyth.proto.dh import dh, kdf
from nyth.proto.identity import Identity, ed25519_public_to_x25519
from nyth.proto.p2p import Ack, Envelope, decode_payload

# 2048, not Tapir's 8192: measured on Tor, a 2 KiB round trip takes ~1 ms where 4 KiB and
# up fall into ~40-90 ms steps (docs/performance.md), and every message waits for its ack.
PACKET_SIZE = 2048
MAGIC = b"NYTHP2P1"
_TAG_SIZE = nacl.bindings.crypto_secretbox_MACBYTES
_PLAIN_SIZE = PACKET_SIZE - _TAG_SIZE
MAX_DATA = _PLAIN_SIZE - 2
_HELLO, _REPLY, _CONFIRM = 1, 2, 3


def _kdf(material: bytes, label: bytes) -> bytes:
    return kdf(material, label)


def _dh(private: bytes, public: bytes) -> bytes:
    return dh(private, public, "handshake key")


def _handshake_frame(kind: int, *fields: bytes) -> bytes:
    body = MAGIC + bytes([kind]) + b"".join(fields)
    return body + bytes(PACKET_SIZE - len(body))


def _parse_handshake_frame(frame: bytes, kind: int, field_sizes: tuple[int, ...]) -> list[bytes]:
    if len(frame) != PACKET_SIZE:
        raise DecodeError(f"handshake frame must be {PACKET_SIZE} bytes, got {len(frame)}")
    if frame[: len(MAGIC)] != MAGIC:
        raise DecodeError("not a Nyth P2P handshake frame (bad magic)")
    if frame[len(MAGIC)] != kind:
        raise ProtocolError(f"expected handshake frame type {kind}, got {frame[len(MAGIC)]}")
    fields, offset = [], len(MAGIC) + 1
    for size in field_sizes:
        fields.append(frame[offset: offset + size])
        offset += size
    if any(frame[offset:]):
        raise DecodeError("handshake frame padding is not zero")
    return fields


class PacketCipher:
    """One direction of an established session."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def _nonce(self) -> bytes:
        return self._counter.to_bytes(nacl.bindings.crypto_secretbox_NONCEBYTES, "big")

    def seal(self, data: bytes) -> bytes:
        if len(data) > MAX_DATA:
            raise ValueError(f"packet data is {len(data)} bytes, at most {MAX_DATA} fit")
        plain = struct.pack(">H", len(data)) + data
        plain += bytes(_PLAIN_SIZE - len(plain))
        frame = nacl.bindings.crypto_secretbox(plain, self._nonce(), self._key)
        self._counter += 1
        return frame

    def open(self, frame: bytes) -> bytes:
        if len(frame) != PACKET_SIZE:
            raise DecodeError(f"packet must be {PACKET_SIZE} bytes, got {len(frame)}")
        try:
            plain = nacl.bindings.crypto_secretbox_open(frame, self._nonce(), self._key)
        except nacl.exceptions.CryptoError as exc:
            raise AuthenticationError("packet failed authentication (forged or replayed)") from exc
        self._counter += 1
        (length,) = struct.unpack_from(">H", plain)
        if length > MAX_DATA or any(plain[2 + length:]):
            raise DecodeError("packet length field or padding is invalid")
        return plain[2: 2 + length]


class _Keys:
    def __init__(self, dh1: bytes, dh2: bytes, dh3: bytes, transcript: bytes) -> None:
        self.th = hashlib.blake2b(transcript, digest_size=32).digest()
        material = dh1 + dh2 + dh3 + self.th
        self.i2r = _kdf(material, b"nyth-i2r-data")
        self.r2i = _kdf(material, b"nyth-r2i-data")
        self._i_confirm = _kdf(material, b"nyth-i-confirm")
        self._r_confirm = _kdf(material, b"nyth-r-confirm")

    def proof(self, initiator: bool) -> bytes:
        key = self._i_confirm if initiator else self._r_confirm
        return hashlib.blake2b(self.th, key=key, digest_size=32).digest()


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class HandshakeComplete:
    remote_public_key: bytes


@dataclass(frozen=True)
class MessageReceived:
    envelope: Envelope


@dataclass(frozen=True)
class AckReceived:
    msg_id: bytes


Event = HandshakeComplete | MessageReceived | AckReceived


class P2PConnection:
    """One P2P session, either role, as a pure state machine (h11-style).

    Feed bytes from the socket to `receive_data`, which returns events; write whatever
    `data_to_send` returns. Any error raised means the session is over: close the socket.
    """

    def __init__(self, identity: Identity, remote_public_key: bytes | None = None) -> None:
        self._identity = identity
        self.initiator = remote_public_key is not None
        self.remote_public_key = remote_public_key
        self.state = State.HANDSHAKING
        self._inbuf = bytearray()
        self._out = bytearray()
        self._pending: list[bytes] = []
        self._eph = nacl.public.PrivateKey.generate()
        self._remote_eph: bytes | None = None
        self._keys: _Keys | None = None
        self._send_cipher: PacketCipher | None = None
        self._recv_cipher: PacketCipher | None = None
        self._step = 0
        if self.initiator:
            assert remote_public_key is not None
            self._remote_x = ed25519_public_to_x25519(remote_public_key)
            self._out += _handshake_frame(_HELLO, identity.public_key, bytes(self._eph.public_key))

    # -- outgoing -------------------------------------------------------------------------
    def send(self, payload: Envelope | Ack) -> None:
        data = payload.encode()
        if self.state is State.CLOSED:
            raise ProtocolError("session is closed")
        if self._send_cipher is None:
            self._pending.append(data)
        else:
            self._out += self._send_cipher.seal(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        self.state = State.CLOSED

    # -- incoming -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            raise ProtocolError("session is closed")
        self._inbuf += data
        events: list[Event] = []
        try:
            while len(self._inbuf) >= PACKET_SIZE:
                frame = bytes(self._inbuf[:PACKET_SIZE])
                del self._inbuf[:PACKET_SIZE]
                event = self._receive_frame(frame)
                if event is not None:
                    events.append(event)
        except Exception:
            self.state = State.CLOSED
            raise
        return events

    def _receive_frame(self, frame: bytes) -> Event | None:
        if self.state is State.ESTABLISHED:
            assert self._recv_cipher is not None
            payload = decode_payload(self._recv_cipher.open(frame))
            if isinstance(payload, Ack):
                return AckReceived(payload.msg_id)
            return MessageReceived(payload)
        if self.initiator:
            return self._initiator_step(frame)
        return self._responder_step(frame)

    def _initiator_step(self, frame: bytes) -> Event | None:
        assert self.remote_public_key is not None
        remote_eph, proof = _parse_handshake_frame(frame, _REPLY, (32, 32))
        keys = _Keys(
            _dh(self._identity.x25519_private(), remote_eph),
            _dh(bytes(self._eph), self._remote_x),
            _dh(bytes(self._eph), remote_eph),
            MAGIC + self._identity.public_key + bytes(self._eph.public_key)
            + self.remote_public_key + remote_eph,
        )
        if not hmac.compare_digest(proof, keys.proof(initiator=False)):
            raise AuthenticationError("callee failed to prove its identity")
        self._out += _handshake_frame(_CONFIRM, keys.proof(initiator=True))
        self._establish(keys, send=keys.i2r, recv=keys.r2i)
        return HandshakeComplete(self.remote_public_key)

    def _responder_step(self, frame: bytes) -> Event | None:
        if self._keys is None:
            remote_pk, remote_eph = _parse_handshake_frame(frame, _HELLO, (32, 32))
            remote_x = ed25519_public_to_x25519(remote_pk)
            self._keys = _Keys(
                _dh(bytes(self._eph), remote_x),
                _dh(self._identity.x25519_private(), remote_eph),
                _dh(bytes(self._eph), remote_eph),
                MAGIC + remote_pk + remote_eph + self._identity.public_key
                + bytes(self._eph.public_key),
            )
            self.remote_public_key = remote_pk
            self._out += _handshake_frame(
                _REPLY, bytes(self._eph.public_key), self._keys.proof(initiator=False)
            )
            return None
        (proof,) = _parse_handshake_frame(frame, _CONFIRM, (32,))
        if not hmac.compare_digest(proof, self._keys.proof(initiator=True)):
            raise AuthenticationError("caller failed to prove its identity")
        self._establish(self._keys, send=self._keys.r2i, recv=self._keys.i2r)
        assert self.remote_public_key is not None
        return HandshakeComplete(self.remote_public_key)

    def _establish(self, keys: _Keys, *, send: bytes, recv: bytes) -> None:
        self._keys = keys
        self._send_cipher = PacketCipher(send)
        self._recv_cipher = PacketCipher(recv)
        self.state = State.ESTABLISHED
        for data in self._pending:
            self._out += self._send_cipher.seal(data)
        self._pending.clear()
