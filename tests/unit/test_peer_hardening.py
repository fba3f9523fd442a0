"""Peer start-up and housekeeping: the API token, private files, concurrent profile
creation, background tasks, and the P2P onion's stream cap."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path
from typing import Any

import nyth_peer.engine as engine_mod
import pytest
from nyth.config import ConfigError
from nyth.proto.identity import Identity
from nyth.tor.endpoints import ControlEndpoint
from nyth.tor.publisher import OnionPublisher
from nyth_peer.__main__ import MIN_API_TOKEN_CHARS, prepare
from nyth_peer.engine import Engine
from nyth_peer.p2p import P2P_MAX_STREAMS, P2PLimits
from nyth_peer.profile import Profile, ProfileExistsError
from nyth_peer.settings import PeerSettings
from nyth_peer.store import Store
from pydantic import SecretStr


@pytest.fixture
def umask():
    """prepare() sets the process umask: give the rest of the run its own back."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _settings(data_dir: Path, **kwargs: Any) -> PeerSettings:
    return PeerSettings(data_dir=data_dir, tor_socks="127.0.0.1:9050",
                        tor_control="127.0.0.1:9051", **kwargs)


@pytest.mark.parametrize("token", ["", "   ", "short-token", "x" * (MIN_API_TOKEN_CHARS - 1),
                                   " " + "x" * 20])
def test_short_or_empty_api_tokens_are_refused(tmp_path: Path, umask: None, token: str) -> None:
    with pytest.raises(ConfigError, match="API token"):
        prepare(_settings(tmp_path, api_token=SecretStr(token)))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    with pytest.raises(ConfigError, match="NYTH_API_TOKEN_FILE"):
        prepare(_settings(tmp_path / "data", api_token_file=token_file))


def test_api_token_accepted_generated_and_regenerated(tmp_path: Path, umask: None) -> None:
    good = "x" * MIN_API_TOKEN_CHARS
    assert prepare(_settings(tmp_path, api_token=SecretStr(good))) == good
    data = tmp_path / "data"
    generated = prepare(_settings(data))
    assert len(generated) >= 32 and (data / "api-token").read_text() == generated
    assert prepare(_settings(data)) == generated   # kept across restarts
    (data / "api-token").write_text(" \n")
    regenerated = prepare(_settings(data))
    assert len(regenerated) >= 32 and regenerated != generated
    assert (data / "api-token").read_text() == regenerated
    (data / "api-token").write_text("tooshort")
    with pytest.raises(ConfigError, match="at least"):
        prepare(_settings(data))


def test_data_dir_and_database_files_are_private(tmp_path: Path, umask: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    prepare(_settings(data))
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert os.umask(0o077) == 0o077   # what prepare() left for the rest of the process


def test_sqlite_side_files_are_private_whatever_the_umask(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "profile.db"
    store = Store(path, os.urandom(32))
    store.put("c", "k", {"v": 1})
    files = [path, path.with_name("profile.db-wal"), path.with_name("profile.db-shm")]
    for file in files:
        assert file.exists(), file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    store.close()
    # Side files left readable by an older version are tightened when the store opens.
    for file in files[1:]:
        file.touch()
        file.chmod(0o644)
    store = Store(path, os.urandom(32))
    for file in files[1:]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    store.close()


async def test_concurrent_profile_creations_one_wins(tmp_path: Path) -> None:
    results = await asyncio.gather(
        asyncio.to_thread(Profile.create, tmp_path, "alice", "passphrase of alice"),
        asyncio.to_thread(Profile.create, tmp_path, "bob", "passphrase of bob"),
        return_exceptions=True)
    winners = [r for r in results if isinstance(r, Profile)]
    losers = [r for r in results if isinstance(r, ProfileExistsError)]
    assert len(winners) == 1 and len(losers) == 1
    winner = winners[0]
    passphrase = f"passphrase of {winner.name}"
    winner.store.close()
    # The key on disk is the identity the engine would run with.
    on_disk = Profile.unlock(tmp_path, passphrase)
    assert on_disk.identity.onion == winner.identity.onion
    on_disk.store.close()


def test_profile_key_file_is_created_exclusively(tmp_path: Path, monkeypatch) -> None:
    """Another process creating the key between our check and our write: we lose, loudly,
    and its key is left untouched."""
    key = Profile.key_path(tmp_path)
    real_exists = Profile.exists

    def racing_exists(data_dir: Path) -> bool:
        answer = real_exists(data_dir)
        key.write_bytes(b"the other process's key")
        return answer

    monkeypatch.setattr(Profile, "exists", staticmethod(racing_exists))
    with pytest.raises(ProfileExistsError):
        Profile.create(tmp_path, "alice", "correct horse battery")
    assert key.read_bytes() == b"the other process's key"
    assert not (tmp_path / "profile.db").exists()


async def test_finished_background_tasks_are_not_kept(tmp_path: Path, monkeypatch) -> None:
    calls = 0

    async def newnym(_control: ControlEndpoint) -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise OSError("gateway down")   # best effort: not logged, not kept

    monkeypatch.setattr(engine_mod, "forget_onion_failures", newnym)
    engine = Engine(_settings(tmp_path))
    for _ in range(50):
        engine._last_newnym = 0.0
        engine.forget_onion_failures()
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert calls == 50
    assert engine._tasks == set()
    await engine.close()


def test_publisher_passes_max_streams_to_add_onion() -> None:
    seen: dict[str, Any] = {}

    class Controller:
        def add_event_listener(self, *_args: Any) -> None:
            pass

        def create_ephemeral_hidden_service(self, ports: Any, **kwargs: Any) -> Any:
            seen.update(kwargs)
            return None

    control = ControlEndpoint("127.0.0.1", 9051, None)
    publisher = OnionPublisher(control, Identity.generate(), virtual_port=9878,
                               target="127.0.0.1:1", max_streams=P2P_MAX_STREAMS)
    publisher._add_onion(Controller(), lambda _e: None)
    assert seen["max_streams"] == P2P_MAX_STREAMS
    seen.clear()
    OnionPublisher(control, Identity.generate(), virtual_port=80,
                   target="127.0.0.1:1")._add_onion(Controller(), lambda _e: None)
    assert seen["max_streams"] is None   # services that did not ask keep tor's default
    with pytest.raises(ValueError, match="max_streams"):
        OnionPublisher(control, Identity.generate(), virtual_port=80, target="127.0.0.1:1",
                       max_streams=0)


def test_stream_cap_fits_the_inbound_budgets() -> None:
    limits = P2PLimits()
    # One rendezvous circuit cannot fill the handshake pool or the strangers' budget alone.
    assert P2P_MAX_STREAMS * 2 <= limits.max_handshakes
    assert P2P_MAX_STREAMS < limits.max_stranger_sessions


def test_the_peer_log_does_not_record_which_urls_it_fetched(caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs each request's URL (a contact's card, a server polled) at INFO."""
    from nyth_peer.__main__ import configure_logging

    configure_logging("info")
    with caplog.at_level(logging.INFO):
        logging.getLogger("httpx").info("HTTP Request: GET http://x.onion/v1/cards/y")
        logging.getLogger("nyth_peer.engine").info("profile unlocked")
    assert [r.name for r in caplog.records] == ["nyth_peer.engine"]


# -- the test-reader hook (dev mode only) ----------------------------------------------------


def test_test_reader_label_needs_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NYTH_TEST_READER_LABEL is a test hook accepted only "
                                         "with NYTH_DEV_MODE=true"):
        _settings(tmp_path, test_reader_label="alice")
    with pytest.raises(ValueError, match="pattern"):
        _settings(tmp_path, dev_mode=True, test_reader_label="alice smith")
    assert _settings(tmp_path, dev_mode=True, test_reader_label="alice").test_reader_label == "alice"


def test_test_reader_label_refused_from_the_environment(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from nyth.config import load_settings

    for name, value in {"NYTH_DATA_DIR": str(tmp_path), "NYTH_TOR_SOCKS": "127.0.0.1:9050",
                        "NYTH_TOR_CONTROL": "127.0.0.1:9051",
                        "NYTH_TEST_READER_LABEL": "alice"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"NYTH_TEST_READER_LABEL .*NYTH_DEV_MODE=true"):
        load_settings(PeerSettings)
    monkeypatch.setenv("NYTH_DEV_MODE", "1")
    assert load_settings(PeerSettings).test_reader_label == "alice"


@pytest.mark.parametrize("label", ["alice", None])
async def test_group_clients_carry_the_label_only_when_set(tmp_path: Path,
                                                          label: str | None) -> None:
    settings = _settings(tmp_path, dev_mode=True, test_reader_label=label)
    async with Engine(settings).group_http_factory()() as http:
        assert http.headers.get("Nyth-Test-Reader") == label
    async with Engine(_settings(tmp_path)).group_http_factory()() as http:
        assert "Nyth-Test-Reader" not in http.headers
