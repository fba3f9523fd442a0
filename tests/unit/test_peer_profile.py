"""The profile on disk: sealed keys, encrypted rows, no plaintext identifiers."""

from __future__ import annotations

import pytest
from nyth.errors import AuthenticationError, DecodeError
from nyth_peer.profile import NoProfileError, Profile, ProfileExistsError


def test_profile_round_trip_and_nothing_in_the_clear(tmp_path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    onion = profile.identity.onion
    secret_text = "meet at the old mill at nine"
    profile.store.put("contacts", "bob" * 18 + "ab", {"onion": "bob" * 18 + "ab", "name": "Bob"})
    profile.store.put(f"messages:{onion}", "m1", {"text": secret_text})
    profile.store.close()

    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert onion.encode() not in data
        assert secret_text.encode() not in data
        assert b"Bob" not in data
        assert profile.identity.seed not in data
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"

    again = Profile.unlock(tmp_path, "correct horse battery")
    assert again.identity.onion == onion
    assert again.name == "alice"
    assert again.store.list(f"messages:{onion}") == [{"text": secret_text}]
    again.store.close()


def test_wrong_passphrase_and_missing_profile(tmp_path):
    with pytest.raises(NoProfileError):
        Profile.unlock(tmp_path, "whatever123")
    Profile.create(tmp_path, "alice", "correct horse battery").store.close()
    with pytest.raises(AuthenticationError):
        Profile.unlock(tmp_path, "wrong passphrase")
    with pytest.raises(ProfileExistsError):
        Profile.create(tmp_path, "alice", "correct horse battery")


@pytest.mark.parametrize(("name", "passphrase"), [("", "long enough"), ("x" * 65, "long enough"),
                                                  ("alice", "short")])
def test_bad_profile_input(tmp_path, name, passphrase):
    with pytest.raises(DecodeError):
        Profile.create(tmp_path, name, passphrase)


def test_store_order_limit_and_tamper(tmp_path):
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    store = profile.store
    for i in range(5):
        store.put("c", f"k{i}", {"i": i})
    store.put("c", "k1", {"i": 10})  # update keeps position
    assert [r["i"] for r in store.list("c")] == [0, 10, 2, 3, 4]
    assert [r["i"] for r in store.list("c", limit=2)] == [3, 4]
    store.delete("c", "k0")
    assert not store.has("c", "k0")
    # Flip a byte in a stored row: reading it fails loudly instead of returning junk.
    store._db.execute("UPDATE records SET value = zeroblob(length(value)) WHERE seq = 3")
    with pytest.raises(AuthenticationError):
        store.list("c")


def test_nested_transactions_commit_or_roll_back_together(tmp_path):
    store = Profile.create(tmp_path, "alice", "correct horse battery").store
    with store.transaction():
        store.put("c", "a", {"v": 1})
        with store.transaction():
            store.put("c", "b", {"v": 2})
    assert len(store.list("c")) == 2
    with pytest.raises(RuntimeError), store.transaction():
        store.put("c", "x", {"v": 3})
        with store.transaction():
            store.put("c", "y", {"v": 4})
        raise RuntimeError("abort")
    assert [r["v"] for r in store.list("c")] == [1, 2]
