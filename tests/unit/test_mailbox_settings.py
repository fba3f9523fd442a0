"""Mailbox settings from NYTH_* variables: defaults, secrets from files, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from nyth.config import ConfigError, load_settings
from nyth.proto.mailbox_bundle import MAX_POW_BITS
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE, max_envelope_size
from nyth.proto.p2p import MAX_BODY
from nyth_mailbox.settings import MailboxSettings

BASE = {"NYTH_DATA_DIR": "/tmp/mb", "NYTH_KEY_PASSPHRASE": "correct horse"}


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> MailboxSettings:
    for name in [*BASE, "NYTH_KEY_PASSPHRASE_FILE", "NYTH_POW_BITS", "NYTH_RECORD_SIZE"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(MailboxSettings)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(monkeypatch, **BASE)
    assert (s.record_size, s.pow_bits, s.stream_key, s.listen_port) == (
        RECOMMENDED_RECORD_SIZE, 20, "nyth:mailbox", 8081)
    # A mailbox run with defaults must carry any P2P message: 26-byte header + full body.
    assert max_envelope_size(s.record_size) >= 26 + MAX_BODY
    assert s.key_path == Path("/tmp/mb/mailbox.key")
    assert s.passphrase() == "correct horse"


def test_passphrase_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("from file\n")
    s = load(monkeypatch, NYTH_DATA_DIR="/tmp/mb", NYTH_KEY_PASSPHRASE_FILE=str(secret))
    assert s.passphrase() == "from file"


@pytest.mark.parametrize("env", [
    {"NYTH_DATA_DIR": "/tmp/mb"},
    {**BASE, "NYTH_POW_BITS": str(MAX_POW_BITS + 1)},
    {**BASE, "NYTH_RECORD_SIZE": "63"},
    {**BASE, "NYTH_REDIS_URL": "http://x"},
    {**BASE, "NYTH_STREAM_KEY": "a b"},
])
def test_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(monkeypatch, **env)
    assert "correct horse" not in str(info.value)
