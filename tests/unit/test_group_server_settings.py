"""Group server settings: env parsing, secrets from files, and errors that never leak them."""

from __future__ import annotations

from pathlib import Path

import pytest
from nyth.config import ConfigError, load_settings
from nyth_group_server.settings import GroupServerSettings

SECRET = "correct horse battery staple"


@pytest.fixture
def env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    clean_env.setenv("NYTH_DATA_DIR", str(tmp_path / "data"))
    return clean_env


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


# -- fault injection: dev mode only ----------------------------------------------------------

FAULTS = {
    "NYTH_FAULT_SEED": "7", "NYTH_FAULT_DROP_FRACTION": "0.5",
    "NYTH_FAULT_WITHHOLD_FROM": "alice", "NYTH_FAULT_WITHHOLD_FRACTION": "0.5",
    "NYTH_FAULT_FORGET_AFTER_SECONDS": "60", "NYTH_FAULT_DELAY_MS": "10",
    "NYTH_FAULT_REORDER": "true", "NYTH_FAULT_TOKEN_WRONG_KEY": "true",
}


def test_every_fault_setting_is_dev_only() -> None:
    faults = {name for name in GroupServerSettings.model_fields if name.startswith("fault_")}
    assert set(GroupServerSettings.dev_only_fields) == faults
    assert {f"NYTH_{name.upper()}" for name in faults} == set(FAULTS)


def test_tokens_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    settings = load_settings(GroupServerSettings)
    assert (settings.tokens_required, settings.token_pow_bits) == (False, 20)
    env.setenv("NYTH_TOKENS_REQUIRED", "true")
    env.setenv("NYTH_TOKEN_POW_BITS", "24")
    settings = load_settings(GroupServerSettings)
    assert (settings.tokens_required, settings.token_pow_bits) == (True, 24)
    assert settings.token_key_path.name == "token.key"
    for bad in ("25", "-1", "x"):
        env.setenv("NYTH_TOKEN_POW_BITS", bad)
        with pytest.raises(ConfigError, match="NYTH_TOKEN_POW_BITS"):
            load_settings(GroupServerSettings)
    env.setenv("NYTH_TOKEN_POW_BITS", "0")
    env.setenv("NYTH_TOKEN_REPLAY_SECONDS", "1")
    with pytest.raises(ConfigError, match="NYTH_TOKEN_REPLAY_SECONDS"):
        load_settings(GroupServerSettings)
    env.delenv("NYTH_TOKEN_REPLAY_SECONDS")
    env.setenv("NYTH_DEV_MODE", "true")
    env.setenv("NYTH_TOKENS_REQUIRED", "false")
    env.setenv("NYTH_FAULT_TOKEN_WRONG_KEY", "true")
    with pytest.raises(ConfigError, match="needs NYTH_TOKENS_REQUIRED"):
        load_settings(GroupServerSettings)


def test_faults_are_off_by_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    settings = load_settings(GroupServerSettings)
    assert settings.dev_mode is False
    assert (settings.fault_drop_fraction, settings.fault_withhold_from, settings.fault_delay_ms,
            settings.fault_forget_after_seconds, settings.fault_reorder) == (0.0, (), 0, None, False)


@pytest.mark.parametrize(("name", "value"), [
    *FAULTS.items(), ("NYTH_FAULT_DROP_FRACTION", "0"), ("NYTH_FAULT_REORDER", "false")])
def test_a_fault_setting_without_dev_mode_is_refused(env: pytest.MonkeyPatch, name: str,
                                                     value: str) -> None:
    # Even a harmless value: a test hook must not sit in a production configuration.
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv(name, value)
    if name == "NYTH_FAULT_WITHHOLD_FRACTION":
        env.setenv("NYTH_FAULT_WITHHOLD_FROM", "alice")
    with pytest.raises(ConfigError, match=f"{name}.* accepted only with NYTH_DEV_MODE=true"):
        load_settings(GroupServerSettings)
    env.setenv("NYTH_DEV_MODE", "false")
    with pytest.raises(ConfigError, match="NYTH_DEV_MODE=true"):
        load_settings(GroupServerSettings)


def test_dev_mode_accepts_every_fault(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_DEV_MODE", "true")
    for name, value in FAULTS.items():
        env.setenv(name, value)
    env.setenv("NYTH_FAULT_WITHHOLD_FROM", " alice, bob.2 ,alice,")
    env.setenv("NYTH_TOKENS_REQUIRED", "true")  # what the wrong-key fault acts on
    settings = load_settings(GroupServerSettings)
    assert settings.dev_mode is True and settings.fault_token_wrong_key is True
    assert settings.fault_seed == 7 and settings.fault_drop_fraction == 0.5
    assert settings.fault_withhold_from == ("alice", "bob.2")
    assert settings.fault_withhold_fraction == 0.5
    assert settings.fault_forget_after_seconds == 60.0
    assert settings.fault_delay_ms == 10 and settings.fault_reorder is True


@pytest.mark.parametrize(("name", "value"), [
    ("NYTH_FAULT_DROP_FRACTION", "-0.1"), ("NYTH_FAULT_DROP_FRACTION", "1.01"),
    ("NYTH_FAULT_DROP_FRACTION", "nan"), ("NYTH_FAULT_WITHHOLD_FRACTION", "2"),
    ("NYTH_FAULT_WITHHOLD_FROM", "al ice"), ("NYTH_FAULT_WITHHOLD_FROM", "a:b"),
    ("NYTH_FAULT_WITHHOLD_FROM", "x" * 65),
    ("NYTH_FAULT_WITHHOLD_FROM", ",".join(f"r{i}" for i in range(33))),
    ("NYTH_FAULT_FORGET_AFTER_SECONDS", "0"), ("NYTH_FAULT_FORGET_AFTER_SECONDS", "inf"),
    ("NYTH_FAULT_DELAY_MS", "-1"), ("NYTH_FAULT_DELAY_MS", "60001"),
    ("NYTH_FAULT_SEED", "-1"), ("NYTH_FAULT_REORDER", "maybe"), ("NYTH_DEV_MODE", "perhaps"),
])
def test_fault_ranges_are_checked_in_dev_mode(env: pytest.MonkeyPatch, name: str,
                                              value: str) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_DEV_MODE", "true")
    env.setenv("NYTH_FAULT_WITHHOLD_FROM", "alice")
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(GroupServerSettings)


def test_inconsistent_faults_are_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_DEV_MODE", "true")
    env.setenv("NYTH_FAULT_WITHHOLD_FRACTION", "0.5")
    with pytest.raises(ConfigError, match="NYTH_FAULT_WITHHOLD_FRACTION needs "
                                          "NYTH_FAULT_WITHHOLD_FROM"):
        load_settings(GroupServerSettings)
    env.delenv("NYTH_FAULT_WITHHOLD_FRACTION")
    env.setenv("NYTH_MAX_AGE_SECONDS", "60")
    env.setenv("NYTH_FAULT_FORGET_AFTER_SECONDS", "60")
    with pytest.raises(ConfigError, match="must be below NYTH_MAX_AGE_SECONDS"):
        load_settings(GroupServerSettings)


# -- Redis through Sentinel, WAIT ---------------------------------------------------------


def test_sentinels_instead_of_a_url(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_REDIS_SENTINELS", " redis-sentinel-1:26379, [::1]:26380 ,10.0.0.3:26381")
    env.setenv("NYTH_REDIS_SENTINEL_SERVICE", "nyth-group")
    env.setenv("NYTH_REDIS_DB", "2")
    password_file = tmp_path / "redis-pass"
    password_file.write_text("hunter2\n")
    env.setenv("NYTH_REDIS_PASSWORD_FILE", str(password_file))
    env.setenv("NYTH_REDIS_WAIT_REPLICAS", "1")
    settings = load_settings(GroupServerSettings)
    assert settings.redis_sentinels == ["redis-sentinel-1:26379", "[::1]:26380", "10.0.0.3:26381"]
    assert settings.redis_sentinel_service == "nyth-group" and settings.redis_db == 2
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "hunter2"
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (1, 1000)
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(("variables", "message"), [
    ({"NYTH_REDIS_SENTINELS": "s:26379", "NYTH_REDIS_URL": "redis://r:6379/0"},
     "set only one of NYTH_REDIS_URL and NYTH_REDIS_SENTINELS"),
    ({"NYTH_REDIS_SENTINELS": "s:26379"}, "NYTH_REDIS_SENTINELS needs NYTH_REDIS_SENTINEL_SERVICE"),
    ({"NYTH_REDIS_SENTINEL_SERVICE": "nyth"},
     "NYTH_REDIS_SENTINEL_SERVICE needs NYTH_REDIS_SENTINELS"),
    ({"NYTH_REDIS_DB": "3"}, "NYTH_REDIS_DB needs NYTH_REDIS_SENTINELS"),
    ({"NYTH_REDIS_SENTINELS": "s:26379,s:26379", "NYTH_REDIS_SENTINEL_SERVICE": "n"},
     "an address is named twice"),
    ({"NYTH_REDIS_SENTINELS": "s", "NYTH_REDIS_SENTINEL_SERVICE": "n"}, "expected host:port"),
    ({"NYTH_REDIS_SENTINELS": "s:1", "NYTH_REDIS_SENTINEL_SERVICE": "a b"}, "String should match"),
    ({"NYTH_REDIS_WAIT_TIMEOUT_MS": "0"}, "NYTH_REDIS_WAIT_TIMEOUT_MS"),
    ({"NYTH_REDIS_WAIT_REPLICAS": "17"}, "NYTH_REDIS_WAIT_REPLICAS"),
    ({"NYTH_REDIS_PASSWORD": "x", "NYTH_REDIS_PASSWORD_FILE": "/etc/hostname"},
     "set only one of NYTH_REDIS_PASSWORD and NYTH_REDIS_PASSWORD_FILE"),
])
def test_redis_settings_are_checked(env: pytest.MonkeyPatch, variables: dict[str, str],
                                    message: str) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(GroupServerSettings)


# -- behind an Onionbalance front (the Swarm stack) ------------------------------------------

def test_an_onionbalance_instance_runs_its_own_tor(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_ONIONBALANCE_INSTANCE", "3")
    env.setenv("NYTH_TOR_CLIENT_TORRC_FILE", str(tmp_path / "client-torrc"))
    settings = load_settings(GroupServerSettings)
    assert settings.onionbalance_instance == 3
    assert settings.tor_client_torrc_file == tmp_path / "client-torrc"


@pytest.mark.parametrize(("extra", "message"), [
    ({"NYTH_TOR_CONTROL": "gateway:9051"}, "set only one of NYTH_TOR_CONTROL"),
    ({"NYTH_ONIONBALANCE_INSTANCE": "0"}, "NYTH_ONIONBALANCE_INSTANCE"),
    ({"NYTH_ONIONBALANCE_INSTANCE": "11"}, "NYTH_ONIONBALANCE_INSTANCE"),
    ({"NYTH_ONIONBALANCE_INSTANCE": "{{.Task.Slot}}"}, "NYTH_ONIONBALANCE_INSTANCE"),
])
def test_bad_onionbalance_settings_are_refused(env: pytest.MonkeyPatch, extra: dict[str, str],
                                               message: str) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_ONIONBALANCE_INSTANCE", "1")
    for name, value in extra.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(GroupServerSettings)


def test_a_client_torrc_without_an_instance_is_refused(env: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    env.setenv("NYTH_KEY_PASSPHRASE", SECRET)
    env.setenv("NYTH_TOR_CLIENT_TORRC_FILE", str(tmp_path / "client-torrc"))
    with pytest.raises(ConfigError, match="needs NYTH_ONIONBALANCE_INSTANCE"):
        load_settings(GroupServerSettings)
