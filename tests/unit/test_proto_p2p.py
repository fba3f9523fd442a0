"""P2P payload codec: messages, acks, text and contact-request bodies.

Payloads travel only inside authenticated packets, so a flipped bit in a msg id or body
is caught by the packet MAC, not here. What the codec itself must guarantee: every
input either decodes to a value that re-encodes to exactly the same bytes (one encoding
per value), or raises DecodeError — never another exception.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import DecodeError
from nyth.proto.p2p import (
    MAX_BODY,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    MSG_ID_SIZE,
    Ack,
    ContactAccept,
    ContactRequest,
    Envelope,
    MessageKind,
    decode_payload,
    decode_text,
    encode_text,
    new_msg_id,
)
from nyth.proto.session import MAX_DATA


def big(lo: int, hi: int, head: st.SearchStrategy[bytes] = st.just(b"")) -> st.SearchStrategy[bytes]:
    """Large byte strings, cheaply: Hypothesis draws a head, a seed and a length."""
    return st.builds(lambda h, seed, n: (h + random.Random(seed).randbytes(n))[:n],
                     head, st.integers(0, 2**32), st.integers(lo, hi))


ids = st.binary(min_size=MSG_ID_SIZE, max_size=MSG_ID_SIZE)
envelopes = st.builds(
    Envelope, msg_id=ids, kind=st.sampled_from(MessageKind),
    timestamp_ms=st.integers(0, (1 << 63) - 1),
    body=st.binary(max_size=200) | big(MAX_BODY - 5, MAX_BODY),
)
acks = st.builds(Ack, ids)
payloads = envelopes | acks
texts = st.text(min_size=1, max_size=MAX_TEXT_CHARS)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def decodes_canonically_or_rejects(data: bytes) -> None:
    try:
        payload = decode_payload(data)
    except DecodeError:
        return
    assert payload.encode() == data


def test_layout() -> None:
    env = Envelope(bytes(range(16)), MessageKind.GROUP_INVITE, 0x0102030405060708, b"body")
    assert env.encode() == b"\x10" + bytes(range(16)) + b"\x05" \
        + bytes.fromhex("0102030405060708") + b"body"
    assert Ack(bytes(range(16))).encode() == b"\x11" + bytes(range(16))
    assert [k.value for k in MessageKind] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert len(new_msg_id()) == MSG_ID_SIZE and new_msg_id() != new_msg_id()


def test_largest_message_fits_in_a_packet() -> None:
    assert len(Envelope(bytes(16), MessageKind.TEXT, 0, bytes(MAX_BODY)).encode()) <= MAX_DATA


@settings(max_examples=80)
@given(payloads)
def test_round_trip(payload: Envelope | Ack) -> None:
    assert decode_payload(payload.encode()) == payload


@settings(max_examples=120)
@given(payloads, st.data())
def test_flipped_bit_decodes_canonically_or_is_rejected(payload: Envelope | Ack,
                                                         data: st.DataObject) -> None:
    encoded = payload.encode()
    bit = data.draw(st.integers(0, 8 * min(len(encoded), 40) - 1)
                    | st.integers(0, 8 * len(encoded) - 1))
    decodes_canonically_or_rejects(flip(encoded, bit))


@settings(max_examples=80)
@given(payloads, st.data())
def test_truncation_and_extension_decode_canonically_or_are_rejected(
        payload: Envelope | Ack, data: st.DataObject) -> None:
    encoded = payload.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decodes_canonically_or_rejects(encoded[:cut])
    decodes_canonically_or_rejects(encoded + data.draw(st.binary(min_size=1, max_size=20)))


@pytest.mark.parametrize("cut", range(26))
def test_truncated_headers_are_rejected(cut: int) -> None:
    encoded = Envelope(bytes(16), MessageKind.TEXT, 1, b"x").encode()
    with pytest.raises(DecodeError):
        decode_payload(encoded[:cut])
    with pytest.raises(DecodeError):
        decode_payload(Ack(bytes(16)).encode()[: min(cut, 16)])


@settings(max_examples=120)
@given(st.binary(max_size=64) | big(MAX_BODY, MAX_DATA, st.binary(max_size=30)))
def test_arbitrary_bytes_decode_canonically_or_are_rejected(data: bytes) -> None:
    decodes_canonically_or_rejects(data)


def test_specific_rejections() -> None:
    header = struct.Struct(">B16sBQ")
    bad = [
        b"",
        b"\x12" + bytes(16),                                        # unknown type
        b"\x11" + bytes(15), b"\x11" + bytes(17),                   # ack wrong size
        header.pack(0x10, bytes(16), 0, 0),                         # kind 0
        header.pack(0x10, bytes(16), 10, 0),                        # kind 10
        header.pack(0x10, bytes(16), 1, 1 << 63),                   # timestamp ≥ 2^63
        header.pack(0x10, bytes(16), 1, 0) + bytes(MAX_BODY + 1),   # body too big
    ]
    for data in bad:
        with pytest.raises(DecodeError):
            decode_payload(data)


@pytest.mark.parametrize("kwargs", [
    {"msg_id": bytes(15)}, {"msg_id": bytes(17)}, {"timestamp_ms": -1},
    {"timestamp_ms": 1 << 63}, {"body": bytes(MAX_BODY + 1)},
])
def test_envelope_refuses_invalid_fields(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"msg_id": bytes(16), "kind": MessageKind.TEXT,
                              "timestamp_ms": 0, "body": b""}
    with pytest.raises(DecodeError):
        Envelope(**{**fields, **kwargs})
    with pytest.raises(DecodeError):
        Ack(bytes(15))


# -- text -------------------------------------------------------------------------------

@settings(max_examples=60)
@given(texts)
def test_text_round_trip(text: str) -> None:
    try:
        body = encode_text(text)
    except DecodeError:
        assert len(text.encode()) > MAX_BODY
        return
    assert decode_text(body) == text
    Envelope(bytes(16), MessageKind.TEXT, 0, body)  # whatever encodes, an Envelope carries


def test_longest_ascii_text_fits() -> None:
    assert len(encode_text("x" * MAX_TEXT_CHARS)) == MAX_TEXT_CHARS


@settings(max_examples=80)
@given(st.binary(max_size=100))
def test_text_decoder_rejects_with_decode_error_only(body: bytes) -> None:
    try:
        text = decode_text(body)
    except DecodeError:
        return
    assert encode_text(text) == body


@pytest.mark.parametrize("text", ["", "x" * (MAX_TEXT_CHARS + 1), "\ud800",
                                  "😀" * MAX_TEXT_CHARS])  # too many bytes once encoded
def test_text_encoder_rejects_bad_text(text: str) -> None:
    with pytest.raises(DecodeError):
        encode_text(text)


@pytest.mark.parametrize("body", [b"", b"\xff", b"\xed\xa0\x80", b"\xc0\x80",
                                  ("x" * (MAX_TEXT_CHARS + 1)).encode()])
def test_text_decoder_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_text(body)


# -- contact requests ---------------------------------------------------------------------

@settings(max_examples=60)
@given(st.builds(ContactRequest, st.text(max_size=MAX_NAME_CHARS), st.text(max_size=300)))
def test_contact_request_round_trip(request: ContactRequest) -> None:
    body = request.encode()
    assert json.loads(body) == {"name": request.name, "text": request.text}
    assert ContactRequest.decode(body) == request


@settings(max_examples=60)
@given(st.builds(ContactAccept, st.text(max_size=MAX_NAME_CHARS)))
def test_contact_accept_round_trip(accept: ContactAccept) -> None:
    body = accept.encode()
    assert body == b"" if not accept.name else json.loads(body) == {"name": accept.name}
    assert ContactAccept.decode(body) == accept


@settings(max_examples=120)
@given(st.binary(max_size=200)
       | st.dictionaries(st.sampled_from(["name", "x"]), st.none() | st.integers()
                         | st.text(max_size=80), max_size=2).map(lambda o: json.dumps(o).encode()))
def test_contact_accept_decoder_rejects_with_decode_error_only(body: bytes) -> None:
    try:
        accept = ContactAccept.decode(body)
    except DecodeError:
        return
    assert ContactAccept.decode(accept.encode()) == accept
    assert len(accept.name) <= MAX_NAME_CHARS


@pytest.mark.parametrize("body", [
    b'{"name": "\\ud800"}', b'{"name": 1}', b'{"name": "a", "text": ""}', b"[]", b"\xff",
    json.dumps({"name": "x" * (MAX_NAME_CHARS + 1)}).encode()])
def test_contact_accept_refusals(body: bytes) -> None:
    with pytest.raises(DecodeError):
        ContactAccept.decode(body)


@settings(max_examples=120)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                      lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.sampled_from(["name", "text", "x"]), kids,
                                        max_size=3),
                      max_leaves=8).map(lambda obj: json.dumps(obj).encode()))
def test_contact_request_decoder_rejects_with_decode_error_only(body: bytes) -> None:
    try:
        request = ContactRequest.decode(body)
    except DecodeError:
        return
    assert request.encode()  # anything accepted can be encoded again


@pytest.mark.parametrize("body", [
    b"[" * MAX_BODY,                                    # nesting deeper than the parser
    b'{"name": "\\ud800", "text": ""}',                 # lone surrogate: not encodable
    b'{"name": "a", "text": "\\udfff"}',
    b'{"name": "a"}', b'{"name": "a", "text": "b", "c": 1}', b'{"name": 1, "text": "b"}',
    b'["name", "text"]', b"\xff", b"",
    json.dumps({"name": "x" * (MAX_NAME_CHARS + 1), "text": ""}).encode(),
    json.dumps({"name": "", "text": "x" * (MAX_TEXT_CHARS + 1)}).encode(),
])
def test_contact_request_specific_rejections(body: bytes) -> None:
    with pytest.raises(DecodeError):
        ContactRequest.decode(body)


@pytest.mark.parametrize("request_", [
    ContactRequest("x" * (MAX_NAME_CHARS + 1), ""), ContactRequest("", "x" * 4001),
    ContactRequest("\ud800", ""),
    ContactRequest("", "\x00" * MAX_TEXT_CHARS),  # each escaped as \u0000: 24000 bytes
])
def test_contact_request_encoder_rejects_bad_fields(request_: ContactRequest) -> None:
    with pytest.raises(DecodeError):
        request_.encode()
