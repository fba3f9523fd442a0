"""The Onionbalance front's settings and its checks of the network and of Onionbalance."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from nyth.config import ConfigError
from nyth.tor.onionbalance_front import FrontSettings, _published, _unfit_network
from nyth.tor.privnet import announced_consensus


def _consensus(interval: int, hsdirs: int, others: int = 1) -> str:
    fresh = f"2026-11-30 12:00:{interval:02d}" if interval < 60 else "2026-11-30 12:01:00"
    lines = ["network-status-version 3 microdesc", "valid-after 2026-11-30 12:00:00",
             f"fresh-until {fresh}"]
    lines += ["r relay x", "s Fast Guard HSDir Running Stable Valid"] * hsdirs
    lines += ["r relay y", "s Fast Running Valid"] * others
    return "\n".join(lines) + "\n"


@pytest.fixture
def authority() -> Iterator[tuple[list[str], list[str]]]:
    """A directory authority's DirPort serving whatever consensus the test puts in."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served[-1].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lines = [f"DirAuthority auth0 orport=1 no-v2 v3ident=AB 127.0.0.1:{server.server_port} AB"]
    yield lines, served
    server.shutdown()


def test_a_fitting_network_passes(authority: tuple[list[str], list[str]]) -> None:
    lines, served = authority
    served.append(_consensus(20, 9))
    summary = announced_consensus(lines)
    assert summary is not None and (summary.voting_interval, summary.hsdirs) == (20, 9)
    assert _unfit_network(lines) is None


@pytest.mark.parametrize(("interval", "hsdirs", "message"), [
    (10, 9, "votes every 10 s; Onionbalance's testnet mode needs 20 s"),
    (20, 5, "has 5 HSDirs; Onionbalance needs 8"),
])
def test_an_unfit_network_is_named(authority: tuple[list[str], list[str]], interval: int,
                                   hsdirs: int, message: str) -> None:
    lines, served = authority
    served.append(_consensus(interval, hsdirs))
    assert message in (_unfit_network(lines) or "")


def test_no_authority_answering_is_unfit() -> None:
    lines = ["DirAuthority auth0 orport=1 no-v2 v3ident=AB 127.0.0.1:9 AB"]
    assert _unfit_network(lines) == "the private Tor network serves no consensus"


def test_published_needs_a_publish_attempt_for_every_service() -> None:
    assert not _published(None)
    assert not _published({"services": []})
    assert not _published({"services": [{"publishAttemptFirstDescriptor": None}]})
    assert _published({"services": [{"publishAttemptFirstDescriptor": "2026-11-30 12:00:00"}]})


@pytest.fixture
def front_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    clean_env.setenv("NYTH_ONIONBALANCE_KEY_FILE", str(tmp_path / "group_server.key"))
    clean_env.setenv("NYTH_KEY_PASSPHRASE", "a passphrase")
    return clean_env


def test_front_settings_defaults(front_env: pytest.MonkeyPatch) -> None:
    settings = FrontSettings.from_env()
    assert settings.instances == 5 and settings.client_torrc is None
    assert settings.log_level == "warning"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("NYTH_ONIONBALANCE_INSTANCES", "11", "1..10"),
    ("NYTH_ONIONBALANCE_INSTANCES", "many", "must be a number"),
    ("NYTH_ONIONBALANCE_LOG_LEVEL", "loud", "LOG_LEVEL"),
    ("NYTH_ONIONBALANCE_KEY_FILE", "", "KEY_FILE"),
])
def test_bad_front_settings_are_refused(front_env: pytest.MonkeyPatch, name: str, value: str,
                                        message: str) -> None:
    front_env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        FrontSettings.from_env()


def test_the_passphrase_is_required(front_env: pytest.MonkeyPatch) -> None:
    front_env.delenv("NYTH_KEY_PASSPHRASE")
    with pytest.raises(ConfigError, match="NYTH_KEY_PASSPHRASE"):
        FrontSettings.from_env()
