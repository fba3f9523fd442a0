"""The keys and files an Onionbalance front and its instances are given."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from nyth.proto.identity import Identity, onion_from_public_key
from nyth.tor.onionbalance import (
    MAX_INSTANCES,
    instance_identity,
    instance_torrc_lines,
    onionbalance_config,
    pem_private_key,
    tor_secret_key_file,
    write_instance_hs_dir,
)

seeds = st.binary(min_size=32, max_size=32)


@given(seeds)
def test_the_pem_front_key_is_the_identity_as_a_pem_reader_sees_it(seed: bytes) -> None:
    identity = Identity.from_seed(seed)
    key = serialization.load_pem_private_key(pem_private_key(identity), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    assert onion_from_public_key(public) == identity.onion


@given(seeds)
def test_the_tor_key_file_holds_the_clamped_expanded_key(seed: bytes) -> None:
    data = tor_secret_key_file(Identity.from_seed(seed))
    assert data[:32] == b"== ed25519v1-secret: type0 ==\x00\x00\x00"
    expanded = data[32:]
    assert len(expanded) == 64
    assert expanded[32:] == hashlib.sha512(seed).digest()[32:]
    assert expanded[0] & 7 == 0 and expanded[31] & 0xC0 == 0x40


def test_instances_have_their_own_stable_keys_per_slot() -> None:
    front = Identity.from_seed(bytes(range(32)))
    onions = [instance_identity(front, slot).onion for slot in range(1, MAX_INSTANCES + 1)]
    assert len(set(onions) | {front.onion}) == MAX_INSTANCES + 1
    assert instance_identity(front, 3).onion == onions[2]  # same slot, same address
    other = Identity.from_seed(bytes(32))
    assert instance_identity(other, 1).onion != onions[0]
    for slot in (0, MAX_INSTANCES + 1):
        with pytest.raises(ValueError, match="slot"):
            instance_identity(front, slot)


def test_the_config_lists_every_instance_under_the_front_key() -> None:
    config = json.loads(onionbalance_config("front.pem", ["a" * 56, "b" * 56]))
    (service,) = config["services"]
    assert service["key"] == "front.pem"
    assert [i["address"] for i in service["instances"]] == ["a" * 56 + ".onion",
                                                           "b" * 56 + ".onion"]


def test_an_instance_dir_names_its_front(tmp_path: Path) -> None:
    front = Identity.from_seed(b"\x07" * 32)
    instance = write_instance_hs_dir(tmp_path / "hs", front, 2)
    assert instance.onion == instance_identity(front, 2).onion
    assert (tmp_path / "hs" / "ob_config").read_text() == f"MasterOnionAddress {front.onion}.onion\n"
    assert (tmp_path / "hs" / "hs_ed25519_secret_key").stat().st_mode & 0o077 == 0
    key = (tmp_path / "hs" / "hs_ed25519_secret_key").read_bytes()
    assert base64.b64encode(key[32:]).decode() == instance.tor_key_blob()
    lines = instance_torrc_lines(tmp_path / "tor", tmp_path / "hs", 80, "127.0.0.1:8080")
    assert "HiddenServiceOnionbalanceInstance 1" in lines
    assert "HiddenServicePort 80 127.0.0.1:8080" in lines
