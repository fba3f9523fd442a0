"""RFC 9497 VOPRF on ristretto255-SHA512 (nyth.proto.voprf): the RFC's vectors, strict
decoding, and proofs that must not verify."""

from __future__ import annotations

import os
from typing import Any

import pytest
import rbcl
from hypothesis import given, settings
from hypothesis import strategies as st
from nyth.errors import AuthenticationError, DecodeError
from nyth.proto import voprf

h = bytes.fromhex
L = voprf.L
P = 2**255 - 19

# RFC 9497 (December 2023), Appendix A.1.2 "VOPRF Mode" of A.1 "ristretto255-SHA512":
# the key pair and all three test vectors (1 and 2 with batch size 1, 3 with batch size 2),
# copied verbatim (the RFC wraps long values over lines; joined here). "ProofRandomScalar"
# is the r of GenerateProof; a batch's Proof covers all of its elements.
SEED = h("a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3")
KEY_INFO = h("74657374206b6579")
SK_SM = h("e6f73f344b79b379f1a0dd37e07ff62e38d9f71345ce62ae3a9bc60b04ccd909")
PK_SM = h("c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e")
VECTORS: list[dict[str, Any]] = [
    {  # Test Vector 1, Batch Size 1
        "Input": ["00"],
        "Blind": ["64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"],
        "BlindedElement": ["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945"],
        "EvaluationElement": ["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e"],
        "Proof": "ddef93772692e535d1a53903db24367355cc2cc78de93b3be5a8ffcc6985dd06"
                 "6d4346421d17bf5117a2a1ff0fcb2a759f58a539dfbe857a40bce4cf49ec600d",
        "ProofRandomScalar": "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
        "Output": ["b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
                   "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c"],
    },
    {  # Test Vector 2, Batch Size 1
        "Input": ["5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
        "Blind": ["64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"],
        "BlindedElement": ["cc0b2a350101881d8a4cba4c80241d74fb7dcbfde4a61fde2f91443c2bf9ef0c"],
        "EvaluationElement": ["60a59a57208d48aca71e9e850d22674b611f752bed48b36f7a91b372bd7ad468"],
        "Proof": "401a0da6264f8cf45bb2f5264bc31e109155600babb3cd4e5af7d181a2c9dc0a"
                 "67154fabf031fd936051dec80b0b6ae29c9503493dde7393b722eafdf5a50b02",
        "ProofRandomScalar": "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
        "Output": ["8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
                   "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6"],
    },
    {  # Test Vector 3, Batch Size 2
        "Input": ["00", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
        "Blind": ["64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
                  "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e"],
        "BlindedElement": ["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
                           "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654"],
        "EvaluationElement": ["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
                              "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a"],
        "Proof": "cc203910175d786927eeb44ea847328047892ddf8590e723c37205cb74600b0a"
                 "5ab5337c8eb4ceae0494c2cf89529dcf94572ed267473d567aeed6ab873dee08",
        "ProofRandomScalar": "419c4f4f5052c53c45f3da494d2b67b220d02118e0857cdbcf037f9ea84bbe0c",
        "Output": ["b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
                   "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c",
                   "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
                   "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6"],
    },
]
VECTOR_IDS = ["vector1-batch1", "vector2-batch1", "vector3-batch2"]

# RFC 9380 Appendix K.3, expand_message_xmd(SHA-512), DST below: (msg, len_in_bytes, uniform_bytes).
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (b"abc", 0x80, "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
                   "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
                   "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
                   "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1"),
]


def keys() -> tuple[voprf.Scalar, voprf.Element]:
    return voprf.derive_key_pair(SEED, KEY_INFO)


def elements(values: list[str]) -> list[voprf.Element]:
    return [voprf.deserialize_element(h(v)) for v in values]


# -- the RFC's vectors -------------------------------------------------------------------

def test_context_string_and_key_pair() -> None:
    assert voprf.CONTEXT_STRING == b"OPRFV1-\x01-ristretto255-SHA512"
    sk, pk = keys()
    assert sk == SK_SM
    assert pk == PK_SM
    assert voprf.public_key(voprf.secret_key_from_bytes(SK_SM)) == PK_SM


@pytest.mark.parametrize(("msg", "length", "expected"), XMD_VECTORS)
def test_expand_message_xmd_sha512(msg: bytes, length: int, expected: str) -> None:
    assert voprf.expand_message_xmd(msg, XMD_DST, length).hex() == expected


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_client_blinds_as_the_rfc(vector: dict[str, Any]) -> None:
    for x, r, blinded in zip(vector["Input"], vector["Blind"], vector["BlindedElement"], strict=True):
        assert voprf.blind_with(h(x), voprf.deserialize_scalar(h(r))).hex() == blinded


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_server_evaluates_and_proves_as_the_rfc(vector: dict[str, Any]) -> None:
    sk, pk = keys()
    r = voprf.deserialize_scalar(h(vector["ProofRandomScalar"]))
    evaluated, proof = voprf.blind_evaluate_batch_with(sk, pk, elements(vector["BlindedElement"]), r)
    assert [e.hex() for e in evaluated] == vector["EvaluationElement"]
    assert proof.encode().hex() == vector["Proof"]


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_client_verifies_and_finalizes_as_the_rfc(vector: dict[str, Any]) -> None:
    outputs = voprf.finalize_batch(
        [h(x) for x in vector["Input"]],
        [voprf.deserialize_scalar(h(r)) for r in vector["Blind"]],
        elements(vector["EvaluationElement"]),
        elements(vector["BlindedElement"]),
        voprf.deserialize_element(PK_SM),
        voprf.Proof.decode(h(vector["Proof"])),
    )
    assert [o.hex() for o in outputs] == vector["Output"]


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_server_evaluate_matches_the_rfc_output(vector: dict[str, Any]) -> None:
    sk, _ = keys()
    for x, out in zip(vector["Input"], vector["Output"], strict=True):
        assert voprf.evaluate(sk, h(x)).hex() == out


def test_single_element_finalize_matches_the_rfc() -> None:
    v = VECTORS[0]
    out = voprf.finalize(h(v["Input"][0]), voprf.deserialize_scalar(h(v["Blind"][0])),
                         elements(v["EvaluationElement"])[0], elements(v["BlindedElement"])[0],
                         voprf.deserialize_element(PK_SM), voprf.Proof.decode(h(v["Proof"])))
    assert out.hex() == v["Output"][0]


# -- proofs that must fail ---------------------------------------------------------------

def batch_of(n: int, sk: voprf.Scalar, pk: voprf.Element) -> tuple:
    inputs = [os.urandom(32) for _ in range(n)]
    pairs = [voprf.blind(x) for x in inputs]
    blinds = [r for r, _ in pairs]
    blinded = [b for _, b in pairs]
    evaluated, proof = voprf.blind_evaluate_batch(sk, pk, blinded)
    return inputs, blinds, blinded, evaluated, proof


def test_a_proof_made_with_another_key_is_refused() -> None:
    _, pk = keys()
    other_sk, other_pk = voprf.generate_key_pair()
    inputs, blinds, blinded, evaluated, proof = batch_of(3, other_sk, other_pk)
    assert voprf.verify_proof(other_pk, blinded, evaluated, proof)
    assert not voprf.verify_proof(pk, blinded, evaluated, proof)
    with pytest.raises(AuthenticationError, match="does not verify"):
        voprf.finalize_batch(inputs, blinds, evaluated, blinded, pk, proof)


def test_a_server_that_evaluates_with_another_key_but_proves_with_its_own_is_refused() -> None:
    """The tagging attack the proof exists for: right pk in the proof, wrong key used."""
    sk, pk = keys()
    other_sk, _ = voprf.generate_key_pair()
    inputs, blinds, blinded, _, _ = batch_of(2, sk, pk)
    evaluated = [voprf.Element(rbcl.crypto_scalarmult_ristretto255(other_sk, b)) for b in blinded]
    # A proof honestly made over the wrong evaluations, with the pinned key's scalar:
    proof = voprf.generate_proof(sk, pk, blinded, evaluated, voprf.random_scalar())
    with pytest.raises(AuthenticationError):
        voprf.finalize_batch(inputs, blinds, evaluated, blinded, pk, proof)


def test_a_tampered_evaluated_element_is_refused() -> None:
    sk, pk = keys()
    inputs, blinds, blinded, evaluated, proof = batch_of(4, sk, pk)
    tampered = list(evaluated)
    tampered[2] = voprf.Element(rbcl.crypto_core_ristretto255_add(evaluated[2], pk))
    with pytest.raises(AuthenticationError):
        voprf.finalize_batch(inputs, blinds, tampered, blinded, pk, proof)


def test_a_reordered_or_partial_batch_is_refused() -> None:
    sk, pk = keys()
    inputs, blinds, blinded, evaluated, proof = batch_of(3, sk, pk)
    swapped = [evaluated[1], evaluated[0], evaluated[2]]
    assert not voprf.verify_proof(pk, blinded, swapped, proof)
    assert not voprf.verify_proof(pk, blinded[:2], evaluated[:2], proof)
    with pytest.raises(ValueError, match="differ in number"):
        voprf.finalize_batch(inputs, blinds, evaluated[:2], blinded, pk, proof)


def test_a_proof_from_another_batch_is_refused() -> None:
    sk, pk = keys()
    _, _, blinded, evaluated, _ = batch_of(2, sk, pk)
    _, _, _, _, other_proof = batch_of(2, sk, pk)
    assert not voprf.verify_proof(pk, blinded, evaluated, other_proof)


@pytest.mark.parametrize(("c", "s"), [(0, 0), (1, 0), (0, 1), (L - 1, L - 1)])
def test_degenerate_proof_scalars_are_refused_not_crashed(c: int, s: int) -> None:
    sk, pk = keys()
    _, _, blinded, evaluated, _ = batch_of(2, sk, pk)
    proof = voprf.Proof.decode(c.to_bytes(32, "little") + s.to_bytes(32, "little"))
    assert not voprf.verify_proof(pk, blinded, evaluated, proof)


def test_composites_that_cancel_to_the_identity_do_not_crash_the_verifier() -> None:
    """A server can't aim for M = I (the weights are hashes), but the code path that
    handles an identity product is the same one: s·I, c·I."""
    sk, pk = keys()
    ident = bytes(32)
    assert voprf._mul(sk, ident) == ident
    assert voprf._mul(bytes(32), pk) == ident


# -- strict decoding ---------------------------------------------------------------------

def test_the_identity_is_refused() -> None:
    with pytest.raises(DecodeError, match="identity"):
        voprf.deserialize_element(bytes(32))


def non_canonical_encodings() -> list[bytes]:
    valid = bytearray(PK_SM)
    valid[31] |= 0x80
    return [
        bytes(valid),                                  # bit 255 set: libsodium's alias of pk
        P.to_bytes(32, "little"),                      # s = p, not reduced
        (P + 2).to_bytes(32, "little"),                # s ≥ p, even
        b"\x01" + bytes(31),                           # s odd ("negative"): never canonical
        b"\xff" * 32,
    ]


@pytest.mark.parametrize("encoding", non_canonical_encodings())
def test_non_canonical_encodings_are_refused(encoding: bytes) -> None:
    with pytest.raises(DecodeError, match="canonical"):
        voprf.deserialize_element(encoding)


def test_encodings_of_no_point_are_refused() -> None:
    refused = 0
    for i in range(2, 200, 2):  # even, below p: canonical s, but most are not on the group
        candidate = i.to_bytes(32, "little")
        if not rbcl.crypto_core_ristretto255_is_valid_point(candidate):
            with pytest.raises(DecodeError):
                voprf.deserialize_element(candidate)
            refused += 1
    assert refused > 10


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_wrong_sized_elements_and_scalars_are_refused(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        voprf.deserialize_element(bad)
    with pytest.raises(DecodeError):
        voprf.deserialize_scalar(bad)


@pytest.mark.parametrize("value", [L, L + 1, 2**256 - 1])
def test_non_canonical_scalars_are_refused(value: int) -> None:
    with pytest.raises(DecodeError, match="canonical"):
        voprf.deserialize_scalar(value.to_bytes(32, "little"))
    with pytest.raises(DecodeError, match="canonical"):
        voprf.Proof.decode(value.to_bytes(32, "little") + bytes(32))
    with pytest.raises(DecodeError, match="canonical"):
        voprf.Proof.decode(bytes(32) + value.to_bytes(32, "little"))


def test_secret_keys_are_canonical_and_non_zero() -> None:
    with pytest.raises(DecodeError, match="zero"):
        voprf.secret_key_from_bytes(bytes(32))
    with pytest.raises(DecodeError, match="canonical"):
        voprf.secret_key_from_bytes(L.to_bytes(32, "little"))
    with pytest.raises(DecodeError):
        voprf.Proof.decode(bytes(63))


def test_bad_arguments() -> None:
    sk, pk = keys()
    with pytest.raises(ValueError, match="seed"):
        voprf.derive_key_pair(bytes(31), b"")
    with pytest.raises(ValueError, match="at most"):
        voprf.blind(bytes(voprf.MAX_INPUT_SIZE + 1))
    with pytest.raises(ValueError, match="zero"):
        voprf.blind_with(b"x", voprf.Scalar(bytes(32)))
    with pytest.raises(ValueError, match="one or more"):
        voprf.blind_evaluate_batch(sk, pk, [])
    with pytest.raises(ValueError, match="DST"):
        voprf.expand_message_xmd(b"", bytes(256), 32)
    with pytest.raises(ValueError, match="length"):
        voprf.expand_message_xmd(b"", b"dst", 255 * 64 + 1)
    voprf.blind(bytes(voprf.MAX_INPUT_SIZE))  # the largest input the RFC allows


# -- properties --------------------------------------------------------------------------

@given(st.lists(st.binary(max_size=100), min_size=1, max_size=5))
@settings(max_examples=25, deadline=None)
def test_blind_evaluate_finalize_equals_evaluate(inputs: list[bytes]) -> None:
    sk, pk = voprf.generate_key_pair()
    pairs = [voprf.blind(x) for x in inputs]
    blinded = [b for _, b in pairs]
    evaluated, proof = voprf.blind_evaluate_batch(sk, pk, blinded)
    # What crosses the wire is decoded again on the other side.
    evaluated = [voprf.deserialize_element(bytes(e)) for e in evaluated]
    proof = voprf.Proof.decode(proof.encode())
    outputs = voprf.finalize_batch(inputs, [r for r, _ in pairs], evaluated, blinded, pk, proof)
    assert outputs == [voprf.evaluate(sk, x) for x in inputs]
    assert all(len(o) == voprf.OUTPUT_SIZE for o in outputs)


def test_blinding_hides_the_input_and_fresh_blinds_differ() -> None:
    r1, b1 = voprf.blind(b"same")
    r2, b2 = voprf.blind(b"same")
    assert r1 != r2 and b1 != b2
    assert voprf.hash_to_group(b"same") not in (b1, b2)
