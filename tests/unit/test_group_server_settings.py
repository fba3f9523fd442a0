"""Group server settings: env parsing, secrets from files, and errors that never leak them."""

from __future__ import annotations

from pathlib import Path

import pytest
from nyth.config import ConfigError, load_settings
from nyth_group_server.settings import GroupServerSettings

SECRET = "correct horse battery staple"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(__import__("os").environ):
        if name.startswith("NYTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NYTH_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    settings = load_settings(GroupServerSettings)
    assert settings.passphrase() == SECRET
    assert settings.listen_host == "127.0.0.1"
    assert settings.blob_size == 2048
    assert settings.max_page == 1000
    assert settings.tor_control is None
    assert settings.effective_onion_target == f"127.0.0.1:{settings.listen_port}"
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_passphrase_from_file_strips_the_final_newline(env: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text(SECRET + "\n")
    env.setenv("NYTH_KEY_PASSPHRASE_FILE", str(secret_file))
    assert load_settings(GroupServerSettings).passphrase() == SECRET


def test_passphrase_is_required(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="NYTH_KEY_PASSPHRASE or NYTH_KEY_PASSPHRASE_FILE"):
        load_settings(GroupServerSettings)


def test_passphrase_and_file_together_is_an_error(env: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text(SECRET)
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_KEY_PASSPHRASE_FILE", str(secret_file))
    with pytest.raises(ConfigError, match="only one of") as info:
        load_settings(GroupServerSettings)
    assert SECRET not in str(info.value)


def test_missing_secret_file_is_reported_without_its_contents(env: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read NYTH_KEY_PASSPHRASE_FILE"):
        load_settings(GroupServerSettings)


def test_errors_never_echo_the_passphrase(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_BLOB_SIZE", "12")
    env.setenv("NYTH_TOR_CONTROL", "no-port")
    with pytest.raises(ConfigError) as info:
        load_settings(GroupServerSettings)
    message = str(info.value)
    assert SECRET not in message
    assert "NYTH_BLOB_SIZE" in message and "NYTH_TOR_CONTROL" in message


@pytest.mark.parametrize(("name", "value"), [
    ("NYTH_BLOB_SIZE", "63"), ("NYTH_BLOB_SIZE", "65537"), ("NYTH_BLOB_SIZE", "big"),
    ("NYTH_MAX_BLOBS", "0"), ("NYTH_MAX_AGE_SECONDS", "0"), ("NYTH_MAX_PAGE", "0"),
    ("NYTH_LISTEN_PORT", "70000"), ("NYTH_TOR_CONTROL", "127.0.0.1"),
    ("NYTH_TOR_CONTROL", "127.0.0.1:0"), ("NYTH_ONION_TARGET", "x:y"),
    ("NYTH_REDIS_URL", "http://127.0.0.1:6379"), ("NYTH_STREAM_KEY", "a b"),
    ("NYTH_LOG_LEVEL", "loud"),
])
def test_invalid_values_are_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(GroupServerSettings)


def test_tor_settings(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password_file = tmp_path / "control"
    password_file.write_text("tor-pass\n")
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_TOR_CONTROL", " gateway:9051 ")
    env.setenv("NYTH_TOR_CONTROL_PASSWORD_FILE", str(password_file))
    env.setenv("NYTH_LISTEN_HOST", "0.0.0.0")
    env.setenv("NYTH_LISTEN_PORT", "8000")
    settings = load_settings(GroupServerSettings)
    assert settings.tor_control == "gateway:9051"
    assert settings.tor_control_password is not None
    assert settings.tor_control_password.get_secret_value() == "tor-pass"
    # Tor cannot connect to a wildcard address; loopback is the useful default.
    assert settings.effective_onion_target == "127.0.0.1:8000"
    env.setenv("NYTH_ONION_TARGET", "group-server:8000")
    assert load_settings(GroupServerSettings).effective_onion_target == "group-server:8000"
