"""The web UI in a real browser (Debian's chromium, driven by Playwright) against real
peers on the private Tor network: two browser contexts as alice and bob befriend by
contact id, chat both ways, see bob's peer go away and come back, and use a group.

The screenshots in docs/screenshots/ are taken here, and so is the figure in
docs/performance.md for the time from a state change in the engine to the browser
showing it (written to docs/screenshots/ui-latency.json; reported, not asserted)."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from nyth.runtime.devnet import PeerHandle
from playwright.sync_api import Browser, FilePayload, Page, expect

from tests.fixtures.browser import REBOUND_NAME, SCREENSHOTS, STATE_OBSERVER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Messages wait for P2P (no mailbox hand-off within the test), and retries come often.
PEER_ENV = {"NYTH_MAILBOX_AFTER_SECONDS": "3600", "NYTH_MAILBOX_POLL_SECONDS": "1",
            "NYTH_MAILBOX_POST_DELAY_SECONDS": "0.5", "NYTH_MAILBOX_CARD_GAP_SECONDS": "1"}
SOON = 15_000  # ms: what "within a few seconds" allows a page, Tor's own delays included


class EngineEvents:
    """alice's engine's event stream, read beside the browser: when each message state
    changed in the engine (its event's `at`), to compare with when the page showed it."""

    def __init__(self, peer: PeerHandle) -> None:
        self.changed: dict[str, float] = {}
        self._peer = peer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self._peer.token}"}
        with httpx.stream("GET", f"{self._peer.api_url}/v1/events", headers=headers,
                          timeout=None) as response:
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "message":
                        m = event["message"]
                        self.changed.setdefault(f"{m['id']}:{m['state']}", event["at"])

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def user(browser: Browser, peer: PeerHandle, **options: Any) -> Iterator[Page]:
    context = browser.new_context(**options)
    context.add_init_script(STATE_OBSERVER)
    page = context.new_page()
    page.goto(f"{peer.api_url}/ui/")
    expect(page).to_have_url(f"{peer.api_url}/ui/login")
    page.get_by_label("API token").fill(peer.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("live")
    try:
        yield page
    finally:
        context.close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="main").get_by_role("link", name=name).click()


def message(page: Page, text: str) -> Any:
    return page.locator("li.msg").filter(has=page.locator("p.text").get_by_text(text, exact=True))


def test_alice_and_bob_use_the_ui_through_failures(devnet, chromium: Browser) -> None:
    mailbox = devnet.add_mailbox(NYTH_POW_BITS="8")
    server = devnet.add_group_server()
    mailbox.wait_online()
    server.wait_online()
    alice = devnet.add_peer("alice", NYTH_MAILBOX=mailbox.onion, **PEER_ENV)
    bob = devnet.add_peer("bob", NYTH_MAILBOX=mailbox.onion, **PEER_ENV)
    alice.wait_online()
    bob.wait_online()
    engine = EngineEvents(alice)
    with user(chromium, alice, viewport={"width": 1100, "height": 760}) as a, \
            user(chromium, bob, viewport={"width": 1100, "height": 760}) as b:
        # bob's contact id, as text and QR code
        nav(b, "Me")
        bob_id = b.get_by_label("Contact id", exact=True).input_value()
        assert bob_id.startswith("nyth1")
        expect(b.locator(".qr svg")).to_be_visible()
        shot(b, "me")

        bob_qr = b.locator(".qr").screenshot()

        # alice scans bob's QR code (a picture of what his page shows) and sends a request;
        # bob sees it live and accepts it
        picture: FilePayload = {"name": "bob.png", "mimeType": "image/png", "buffer": bob_qr}
        a.get_by_label("…or scan their QR code").set_input_files(files=picture)
        expect(a.get_by_label("Contact id (nyth1…) or onion address")).to_have_value(bob_id)
        a.get_by_label("A note with your request (optional)").fill("hi bob, it's alice")
        a.get_by_role("button", name="Send a contact request").click()
        expect(a.locator("#flash")).to_have_text("Contact request sent.")
        nav(b, "Chats")
        request = b.locator(f'li.contact[data-onion="{alice.onion}"]')
        expect(request).to_have_attribute("data-status", "pending_inbound", timeout=90_000)
        expect(request).to_contain_text("hi bob, it's alice")
        shot(b, "contact-request")
        request.get_by_role("button", name="Accept").click()
        bob_row = a.locator(f'li.contact[data-onion="{bob.onion}"]')
        expect(bob_row).to_have_attribute("data-status", "accepted", timeout=90_000)

        # chat both ways, each message's state live
        bob_row.get_by_role("link").click()
        a.get_by_label("Message to").fill("hello bob")
        a.get_by_role("button", name="Send").click()
        expect(message(a, "hello bob")).to_have_attribute("data-state", "delivered",
                                                          timeout=60_000)
        b.locator(f'li.contact[data-onion="{alice.onion}"]').get_by_role("link").click()
        expect(message(b, "hello bob")).to_be_visible()
        b.get_by_label("Message to").fill("hi alice")
        b.get_by_label("Message to").press("Enter")
        expect(message(a, "hi alice")).to_be_visible(timeout=60_000)
        expect(a.locator("#chat-head .conn")).to_have_attribute("data-connection", "connected")
        shot(a, "chat")

        # bob's peer stops: alice is told, and her next message waits with a countdown
        bob.process.stop()
        expect(a.locator("#chat-head .conn")).not_to_have_attribute(
            "data-connection", "connected", timeout=SOON)
        expect(a.locator("#chat-head .conn .reason")).not_to_be_empty()
        a.get_by_label("Message to").fill("are you there?")
        a.get_by_role("button", name="Send").click()
        waiting = message(a, "are you there?")
        expect(waiting).to_have_attribute("data-state", "queued", timeout=SOON + 30_000)
        expect(waiting.locator(".countdown")).to_have_text(
            re.compile(r"^(in \d+ s|now)$"))
        expect(waiting.locator(".reason")).not_to_be_empty()
        shot(a, "chat-queued")

        # bob comes back: delivered, shown once on both sides; bob's page reconnects itself
        bob.process.start()
        bob.wait_online()
        expect(waiting).to_have_attribute("data-state", "delivered", timeout=120_000)
        expect(message(b, "are you there?")).to_have_count(1, timeout=60_000)
        expect(b.locator("#live")).to_have_text("live")
        expect(message(a, "are you there?")).to_have_count(1)

        # a group on the group server: authors shown by name
        nav(a, "Groups")
        a.get_by_label("Name", exact=True).fill("friends")
        a.get_by_label("These servers (onions, one per line):").check()
        a.get_by_label("Group server onions").fill(server.onion)
        a.get_by_role("button", name="Create").click()
        expect(a.locator("#flash")).to_have_text("Group 'friends' created.", timeout=60_000)
        a.get_by_role("link", name="friends").click()
        gid = a.url.rsplit("/", 1)[1]
        a.get_by_label("Contact", exact=True).select_option(bob.onion)
        a.get_by_role("button", name="Invite").click()
        expect(a.locator("#flash")).to_have_text("Invitation sent.", timeout=60_000)
        nav(b, "Groups")
        invite = b.locator(f'ul.invites li[data-group="{gid}"]')
        expect(invite).to_contain_text("friends", timeout=90_000)
        expect(invite).to_contain_text("from alice")
        invite.get_by_role("button", name="Join").click()
        b.goto(f"{bob.api_url}/ui/groups/{gid}")
        b.get_by_label("Post to friends").fill("bob here")
        b.get_by_role("button", name="Post").click()
        a.get_by_label("Post to friends").fill("alice here")
        a.get_by_role("button", name="Post").click()
        for page, me, other, other_text in ((a, "alice here", "bob", "bob here"),
                                            (b, "bob here", "alice", "alice here")):
            post = page.locator("#group-log li.msg", has_text=other_text)
            expect(post.locator(".author")).to_have_text(other, timeout=120_000)
            expect(page.locator("#group-log li.msg", has_text=me).locator(".author")
                   ).to_have_text("you", timeout=60_000)
        shot(a, "group")
        nav(a, "Servers")
        expect(a.locator(f'li.server[data-onion="{server.onion}"]')).to_be_visible()
        shot(a, "servers")
        a.goto(f"{alice.api_url}/ui/contacts/{bob.onion}")
        # A burst of messages, for the latency figure: each state seen live on both pages.
        composer = a.get_by_label("Message to")
        for n in range(12):
            composer.fill(f"burst {n}")
            composer.press("Enter")
            expect(composer).to_have_value("")  # taken by the peer: the next can be typed
        for n in range(12):
            expect(message(a, f"burst {n}")).to_have_attribute("data-state", "delivered",
                                                               timeout=60_000)
        with alice.client() as c:
            round_trips = {"contact bob": c.get(f"/v1/contacts/{bob.onion}")["latency"],
                           **{f"{s['kind']} server": s["latency"] for s in c.get("/v1/servers")}}
        _report_latency(engine, a, round_trips)
        a.set_viewport_size({"width": 390, "height": 844})
        a.reload()
        shot(a, "chat-phone")
    engine.stop()


def _report_latency(engine: EngineEvents, page: Page, round_trips: dict[str, Any]) -> None:
    """alice's engine changing a message's state -> her page showing it, over every state
    her page saw change (both clocks are this machine's). For docs/performance.md."""
    shown: dict[str, float | None] = page.evaluate(
        "JSON.parse(sessionStorage.getItem('__shown') || '{}')")
    gaps = [at_ms - engine.changed[key] * 1000 for key, at_ms in shown.items()
            if at_ms is not None and key in engine.changed]
    assert gaps, "no message state was seen changing live"
    q = statistics.quantiles(gaps, n=20, method="inclusive") if len(gaps) > 1 else gaps * 19
    report = {"samples": len(gaps), "p50_ms": round(statistics.median(gaps)),
              "p95_ms": round(q[18]), "max_ms": round(max(gaps)), "measured_at": time.time(),
              "round_trips_seen_by_alice": round_trips}
    (SCREENSHOTS / "ui-latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"engine -> browser: {report}")


ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{target}/ui/contacts">
<input name="address" value="{onion}"><input name="csrf" value="guessed"></form>
<script>document.getElementById("f").submit();</script></body></html>"""


def test_the_ui_refuses_what_a_browser_can_be_tricked_into(devnet, chromium: Browser) -> None:
    """No session, a wrong token, cross-site and same-site forged posts, and a rebound DNS
    name: each refused in a real browser, and nothing changes in the engine."""
    alice = devnet.add_peer("alice")
    alice.wait_online()
    stranger = devnet.add_peer("stranger")  # only for a valid onion to try to add
    stranger.wait_online()
    context = chromium.new_context()
    page = context.new_page()
    url = alice.api_url
    # no session: every page sends the browser to log in
    page.goto(f"{url}/ui/contacts/{stranger.onion}")
    expect(page).to_have_url(f"{url}/ui/login")
    # a wrong token: refused, and still no session
    page.get_by_label("API token").fill("not-the-token-" + "x" * 20)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("paragraph").filter(has_text="wrong API token")).to_be_visible()
    page.goto(f"{url}/ui/")
    expect(page).to_have_url(f"{url}/ui/login")
    page.get_by_label("API token").fill(alice.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("live")

    # A page on another site posts a form to the UI: the session cookie (SameSite=Strict)
    # is not sent, so it is answered as a request without a session.
    port = url.rsplit(":", 1)[1]
    for origin in (f"http://attacker.example:{port}", "http://127.0.0.1:9"):
        # The second is same-site (an IP's site ignores the port): the cookie goes with
        # it, and the missing CSRF token and the foreign Origin refuse it.
        attacker = context.new_page()
        attacker.route(f"{origin}/", lambda route: route.fulfill(
            content_type="text/html", body=ATTACK.format(target=url, onion=stranger.onion)))
        with attacker.expect_response(f"{url}/ui/contacts") as answer:
            attacker.goto(f"{origin}/")
        assert answer.value.status in (401, 403), (origin, answer.value.status)
        attacker.close()
    with alice.client() as c:
        assert c.get("/v1/contacts") == []

    # DNS rebinding: a name of the attacker's resolving to loopback reaches the port, but
    # not the UI (and the browser holds no cookie for that name anyway).
    rebound = page.goto(f"http://{REBOUND_NAME}:{port}/ui/login")
    assert rebound is not None and rebound.status == 421
    expect(page.get_by_text("does not answer to that host name")).to_be_visible()
    context.close()
