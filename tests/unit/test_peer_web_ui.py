"""The web UI's guard and pages, in process: a real profile, messenger and API behind it
(no Tor). What it refuses (no session, a wrong token, a missing or wrong CSRF token, a
cross-site request, a foreign Host), the cookie it sets, its headers, and that remote
text is escaped. The browser tests (tests/integration/test_web_ui_browser.py) drive the
same pages in chromium over the private Tor network."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nyth.proto.delivery import RetryPolicy
from nyth.proto.identity import Identity
from nyth_peer.api import create_app
from nyth_peer.events import EventBus
from nyth_peer.messenger import PENDING_INBOUND, Messenger
from nyth_peer.profile import Profile
from nyth_peer.web.guard import CSP, host_name
from nyth_peer.web.session import Sessions

TOKEN = "t" * 32
BOB = Identity.from_seed(b"B" * 32)
HOST = "127.0.0.1:8700"
SERVER_ONION = Identity.from_seed(b"S" * 32).onion
# A pinned group server presenting a changed bundle (GET /v1/servers' shape).
SERVER: dict[str, Any] = {
    "onion": SERVER_ONION, "kind": "group", "used_for": ["group friends"],
    "pinned": {"bundle_sha256": "ab" * 32, "limits": {"max_blobs": 1000}, "issued_at": 1},
    "pinned_at": 1.0e9, "state": "bundle_changed", "reason": "max_blobs 1000 -> 10",
    "since": 1.0e9, "next_retry_at": None, "tokens": None,
    "presented": {"bundle_sha256": "cd" * 32, "limits": {"max_blobs": 10}, "issued_at": 2,
                  "changes": ["max_blobs 1000 -> <b>10</b>"], "seen_at": 1.0e9},
    "latency": {"p50_ms": 420.0, "p95_ms": 1900.0, "samples": 9}}
REPINNED: list[tuple[str, str]] = []  # what the engine was asked to re-pin


@pytest.fixture
def messenger(tmp_path: Path) -> Iterator[Messenger]:
    profile = Profile.create(tmp_path, "alice", "correct horse battery")
    yield Messenger(profile, EventBus(), RetryPolicy())
    profile.store.close()


@pytest.fixture
def browser(messenger: Messenger) -> TestClient:
    """A client as a browser is: no bearer token, its own cookies, our Host."""
    # No mailbox configured (its state "off"): offline first contact is the browser tests'.
    mailbox = SimpleNamespace(contact_id=None, privacy=lambda: {"state": {"state": "off"}})
    REPINNED.clear()

    async def repin(onion: str, digest: str) -> dict[str, Any]:
        REPINNED.append((onion, digest))
        return {**SERVER, "presented": None}

    engine: Any = SimpleNamespace(profile=messenger.profile, messenger=messenger,
                                  events=messenger.events, mailbox=mailbox, groups=None,
                                  servers=lambda: [SERVER], repin=repin,
                                  onion_status={"state": "published", "reason": None},
                                  settings=SimpleNamespace(data_dir=Path("/nonexistent")))
    return TestClient(create_app(engine, TOKEN, ui_hosts=["nyth.home.arpa"]),
                      base_url=f"http://{HOST}", follow_redirects=False)


def login(browser: TestClient) -> str:
    """Logs in; returns the CSRF token of the session."""
    answer = browser.post("/ui/login", data={"token": TOKEN})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', browser.get("/ui/me").text)
    assert match, "the page carries the session's CSRF token"
    return match.group(1)


def test_no_session_is_sent_to_log_in(browser: TestClient) -> None:
    for path in ("/ui/", "/ui/me", "/ui/servers", f"/ui/contacts/{BOB.onion}"):
        answer = browser.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login", path
    # htmx asks for a part: told where to go, not handed a login page to paste in.
    answer = browser.get("/ui/parts/contacts", headers={"hx-request": "true"})
    assert answer.status_code == 401 and answer.headers["hx-redirect"] == "/ui/login"
    assert browser.get("/ui/events").status_code == 303
    assert browser.post("/ui/contacts", data={"address": BOB.onion}).status_code == 401


def test_a_wrong_token_gets_no_session(browser: TestClient) -> None:
    answer = browser.post("/ui/login", data={"token": "x" * 32})
    assert answer.status_code == 401 and "wrong API token" in answer.text
    assert "set-cookie" not in answer.headers
    assert browser.post("/ui/login", data={}).status_code == 422
    assert browser.post("/ui/login", data={"token": "t" * 500}).status_code == 422
    # a forged or altered cookie is no session either
    browser.cookies.set("nyth_session", "0" * 32 + ".9999999999." + "0" * 64, path="/ui")
    assert browser.get("/ui/").status_code == 303


def test_the_session_cookie_is_httponly_and_samesite_strict(browser: TestClient) -> None:
    answer = browser.post("/ui/login", data={"token": TOKEN})
    cookie = answer.headers["set-cookie"].lower()
    for part in ("nyth_session=", "httponly", "samesite=strict", "path=/ui"):
        assert part in cookie, cookie
    assert TOKEN not in answer.headers["set-cookie"]
    assert browser.get("/ui/").status_code == 200


def test_posts_need_the_csrf_token(browser: TestClient, messenger: Messenger) -> None:
    csrf = login(browser)
    form = {"address": BOB.onion, "text": "hi"}
    missing = browser.post("/ui/contacts", data=form)
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = browser.post("/ui/contacts", data={**form, "csrf": "0" * 64})
    assert wrong.status_code == 403
    assert messenger.store.list("contacts") == []
    # The token in a header (as htmx sends it) or in the form (without JavaScript).
    ok = browser.post("/ui/contacts", data=form, headers={"x-csrf-token": csrf,
                                                          "hx-request": "true"})
    assert ok.status_code == 200 and ok.headers["hx-trigger"] == "nyth:changed"
    assert [c["onion"] for c in messenger.store.list("contacts")] == [BOB.onion]
    assert browser.post("/ui/contacts", data={**form, "csrf": csrf}).status_code == 303


def test_cross_site_requests_are_refused_even_with_the_token(browser: TestClient) -> None:
    csrf = login(browser)
    form = {"address": BOB.onion, "csrf": csrf}
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                    {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}):
        answer = browser.post("/ui/contacts", data=form, headers=headers)
        assert answer.status_code == 403, headers
    assert browser.post("/ui/contacts", data=form,
                        headers={"origin": f"http://{HOST}",
                                 "sec-fetch-site": "same-origin"}).status_code == 303
    # The login form too: a cross-site page must not log the browser into its session.
    assert browser.post("/ui/login", data={"token": TOKEN},
                        headers={"origin": "http://evil.example"}).status_code == 403


def test_a_foreign_host_is_refused(browser: TestClient) -> None:
    login(browser)
    for host in ("evil.example", "evil.example:8700", "127.0.0.1.nip.io"):
        for path in ("/ui/login", "/ui/"):
            answer = browser.get(path, headers={"host": host})
            assert answer.status_code == 421, (host, path)
    for host in ("localhost:8700", "[::1]:8700", "nyth.home.arpa", "NYTH.home.arpa."):
        assert browser.get("/ui/login", headers={"host": host}).status_code == 200, host


def test_pages_carry_a_strict_csp_and_escape_remote_text(browser: TestClient,
                                                          messenger: Messenger) -> None:
    # A stranger's contact request: their name and note are theirs to choose.
    messenger.store.put("contacts", BOB.onion, {
        "onion": BOB.onion, "name": '<img src=x onerror="alert(1)">', "status": PENDING_INBOUND,
        "request_text": "<script>alert(2)</script>", "mailbox": None})
    login(browser)
    page = browser.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert "<img src=x" not in page.text and "<script>alert" not in page.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page.text
    # no inline script or handler anywhere in our own markup
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert not re.search(r"<[a-z][^<>]*\son[a-z]+=", page.text)


def test_logout_ends_the_session(browser: TestClient) -> None:
    csrf = login(browser)
    cookie = browser.cookies.get("nyth_session")
    assert browser.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    browser.cookies.set("nyth_session", cookie or "", path="/ui")
    assert browser.get("/ui/").status_code == 303  # revoked, even if the cookie is kept


def test_sessions_survive_a_restart_and_die_with_the_token() -> None:
    cookie = Sessions(TOKEN).issue()
    assert Sessions(TOKEN).verify(cookie) is not None
    assert Sessions("u" * 32).verify(cookie) is None
    assert Sessions(TOKEN).verify(cookie, now=10**11) is None  # expired


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8700", "127.0.0.1"), ("[::1]:80", "::1"), ("LOCALHOST", "localhost"),
    ("example.org.", "example.org"), ("::1", "::1"), ("", "")])
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_vendored_scripts_are_the_pinned_releases() -> None:
    """htmx, its SSE extension and jsQR are copied from their npm releases (docs/web-ui.md
    names them); a changed file is a changed dependency, to be pinned deliberately."""
    vendor = Path(__file__).resolve().parents[2] / "services/nyth_peer/web/static/vendor"
    pinned = {name: digest for digest, name in
              (line.split() for line in (vendor / "SHA256SUMS").read_text().splitlines())}
    assert set(pinned) == {p.name for p in vendor.glob("*.js")}
    for name, digest in pinned.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_a_changed_bundle_is_shown_for_review_and_re_pinned_by_its_hash(
        browser: TestClient) -> None:
    csrf = login(browser)
    page = browser.get("/ui/servers").text
    assert f"{SERVER_ONION}.onion" in page and "max_blobs 1000 -&gt; &lt;b&gt;10&lt;/b&gt;" in page
    assert "rtt 0.4 s p50 · 1.9 s p95" in page
    assert f'name="bundle_sha256" value="{"cd" * 32}"' in page
    answer = browser.post(f"/ui/servers/{SERVER_ONION}/repin",
                          data={"bundle_sha256": "cd" * 32, "csrf": csrf},
                          headers={"hx-request": "true"})
    assert answer.status_code == 200 and "Re-pinned" in answer.text
    assert REPINNED == [(SERVER_ONION, "cd" * 32)]
    bad = browser.post(f"/ui/servers/{SERVER_ONION}/repin",
                       data={"bundle_sha256": "zz", "csrf": csrf}, headers={"hx-request": "true"})
    assert bad.status_code == 422 and bad.headers["hx-retarget"] == "#flash"
