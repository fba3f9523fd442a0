"""The whole network in containers: normal use, then breaking things on purpose.

Tests share one compose project (bringing it up costs a minute). Each test asks for the
state it needs through the fixtures below (both peers running, befriended, a group), and
a test that stops or kills a container starts it again even when it fails, so the tests
pass alone, in any selection and in any order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nyth.runtime.devnet import wait_until
from playwright.sync_api import expect

from tests.e2e.conftest import E2EPeer, Stack
from tests.fixtures.stack import befriend, wait_delivered

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def _history(peer, gid):
    with peer.client() as c:
        return c.get(f"/v1/groups/{gid}/messages")["messages"]


def _all_posted(peer, gid) -> bool:
    """Every post of this peer's own was acknowledged by the server (others' are "received")."""
    return not any(m["state"] == "queued" for m in _history(peer, gid))


@pytest.fixture
def friends(stack: Stack) -> Iterator[tuple[E2EPeer, E2EPeer]]:
    """alice and bob, both running and online, each an accepted contact of the other; any
    peer container a test stopped is started again afterwards."""
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    for peer in (alice, bob):
        stack.ensure_running(peer)
    with alice.client() as ca:
        status = {c["onion"]: c["status"] for c in ca.get("/v1/contacts")}
    if status.get(bob.onion) != "accepted":
        befriend(alice, bob, timeout=180)
    yield alice, bob
    for peer in (alice, bob):
        stack.ensure_running(peer)


@pytest.fixture
def group(stack: Stack, friends: tuple[E2EPeer, E2EPeer]) -> str:
    """A group of alice's on the stack's group server that bob has joined (made once)."""
    if "group" not in stack.made:
        alice, bob = friends
        with alice.client() as ca, bob.client() as cb:
            made = ca.post("/v1/groups", {"name": "e2e", "servers": [stack.group_server_onion()]})
            ca.post(f"/v1/groups/{made['id']}/invite", {"contact": bob.onion})
            wait_until(lambda: any(i["id"] == made["id"] for i in cb.get("/v1/groups/invites")),
                       180, what="bob to receive the invite",
                       state=lambda: ca.get(f"/v1/contacts/{bob.onion}"))
            cb.post(f"/v1/groups/invites/{made['id']}/accept")
        stack.made["group"] = made["id"]
    return stack.made["group"]


# What each service may read under /secrets: its own passphrase and, if it talks to tor,
# the control password. Nothing else (a peer must not be able to unlock another's keys).
_SECRETS = {
    "tor-network": set(),
    "tor-gateway": {"/secrets/tor/control-password"},
    "redis": set(),
    "mailbox-redis": set(),
    "discovery-redis": set(),
    "discovery": {"/secrets/own/passphrase", "/secrets/tor/control-password"},
    "group-server": {"/secrets/own/passphrase", "/secrets/tor/control-password"},
    "mailbox": {"/secrets/own/passphrase", "/secrets/tor/control-password"},
    "alice": {"/secrets/own/passphrase", "/secrets/tor/control-password"},
    "bob": {"/secrets/own/passphrase", "/secrets/tor/control-password"},
}


def test_containers_are_confined(stack):
    """Non-root, read-only root, only their own secrets, nothing but the peer APIs on the
    host and only on loopback."""
    published = {}
    for service, secrets in _SECRETS.items():
        container = stack.container(service)
        container.reload()
        assert container.attrs["Config"]["User"] == "10001:10001", service
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True, service
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        assert uid == "10001", (service, uid)
        found = container.exec_run(["find", "/secrets", "-type", "f"]).output.decode().split()
        assert set(found) == secrets, (service, found)
        write = container.exec_run(["touch", "/opt/nyth/written"])
        assert write.exit_code != 0, f"{service}: root filesystem is writable"
        for port, bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                published[(service, port)] = binding["HostIp"]
    assert set(published) == {("alice", "8700/tcp"), ("bob", "8700/tcp")}, published
    assert set(published.values()) == {"127.0.0.1"}, published

    # Each peer listener is on one network only: servers (on `tor`) cannot reach a peer's
    # API, and the other peer (on `api` too) cannot reach its P2P port except through tor.
    def reach(service: str, host: str, port: int) -> str:
        code = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), 3)"
                "\n print('open')\nexcept OSError as e:\n print(type(e).__name__)")
        return stack.exec_python(service, code)

    assert reach("bob", "alice-api", 8700) == "open"  # the control: the test can tell
    assert reach("group-server", "alice-p2p", 8700) != "open"
    assert reach("mailbox", "alice-p2p", 8700) != "open"
    assert reach("bob", "alice-api", 9000) != "open"
    # The control port every tor client may use is the gateway's filter: publishing onions
    # works (every test here relies on it), watching others' circuits or pointing an onion
    # outside the `tor` network does not.
    control = (
        "import socket\n"
        "pw = open('/secrets/tor/control-password').read().strip()\n"
        "s = socket.create_connection(('tor-gateway', 9051), 5); f = s.makefile('rwb')\n"
        "def ask(line):\n"
        " f.write(line.encode() + b'\\r\\n'); f.flush(); return f.readline().decode().strip()\n"
        "print(ask('AUTHENTICATE \"%s\"' % pw)); print(ask('GETINFO circuit-status'))\n"
        "print(ask('SETEVENTS STREAM')); print(ask('SIGNAL HALT'))\n"
        # Onions may point only into the `tor` network: not the host, not the LAN.
        "print(ask('ADD_ONION NEW:ED25519-V3 Port=80,172.17.0.1:22'))\n"
        "print(ask('ADD_ONION NEW:ED25519-V3 Port=80,192.168.1.1:80'))\n"
    )
    answers = stack.exec_python("alice", control).splitlines()
    assert answers[0] == "250 OK", answers
    assert len(answers) == 6 and all(line.startswith("510 ") for line in answers[1:]), answers
    assert "outside the onion target networks" in answers[4], answers
    assert stack.container("tor-gateway").attrs["State"]["Running"]

    # Each Redis is reachable from its own service only.
    assert reach("group-server", "redis", 6379) == "open"
    assert reach("mailbox", "mailbox-redis", 6379) == "open"
    assert reach("discovery", "discovery-redis", 6379) == "open"
    assert reach("group-server", "mailbox-redis", 6379) != "open"
    assert reach("mailbox", "redis", 6379) != "open"
    for other in ("group-server", "mailbox"):
        assert reach(other, "discovery-redis", 6379) != "open", other
    assert reach("discovery", "redis", 6379) != "open"
    assert reach("discovery", "mailbox-redis", 6379) != "open"


def test_a_peer_container_creates_a_group_with_auto(stack, friends):
    """The group server and mailbox advertise themselves to the discovery container,
    which measures them; alice's container, with the CLI alone, creates a group on a
    server the policy picked, says why, and the group works."""
    alice, bob = friends
    server = stack.group_server_onion()

    def measured() -> dict[str, Any] | None:
        with alice.client() as ca:
            view = ca.get("/v1/discovery")
        row = next((s for s in view["servers"] if s["onion"] == server), None)
        # Eligible, not merely up: one probe lost to a fresh Tor circuit leaves a server up
        # but under the policy's 80 % until more probes answer.
        return view if row and row["eligible"] else None
    wait_until(measured, 240, interval=2, what="alice to see the group server eligible",
               state=lambda: alice.client().get("/v1/discovery"))
    result = stack.container("alice").exec_run(
        ["/opt/nyth/bin/nyth", "--json", "group", "create", "auto-e2e", "--auto"],
        environment={"NYTH_API_URL": "http://alice-api:8700",
                     "NYTH_API_TOKEN_FILE": "/data/api-token"})
    assert result.exit_code == 0, result.output.decode()
    made = json.loads(result.output.decode())
    assert [c["onion"] for c in made["choice"]] == [server]
    assert "up:" in made["choice"][0]["reason"], made["choice"]
    gid = made["id"]
    with alice.client() as ca, bob.client() as cb:
        ca.post(f"/v1/groups/{gid}/invite", {"contact": bob.onion})
        wait_until(lambda: any(i["id"] == gid for i in cb.get("/v1/groups/invites")),
                   180, what="bob to receive the invite to the auto group")
        cb.post(f"/v1/groups/invites/{gid}/accept")
        post = ca.post(f"/v1/groups/{gid}/messages", {"text": "on an auto-chosen server"})
    wait_until(lambda: post["hash"] in {m["hash"] for m in _history(bob, gid)}, 180,
               what="bob to read alice's post on the auto-chosen server",
               state=lambda: _history(bob, gid))


def test_p2p_message_and_group_post(friends, group):
    alice, bob = friends
    with alice.client() as ca, bob.client() as cb:
        sent = ca.send(bob.onion, "hello through containers")
        wait_delivered(ca, bob.onion, sent["id"], timeout=180)
        assert "hello through containers" in [m["text"] for m in cb.messages(alice.onion)]
    with bob.client() as cb:
        post = cb.post(f"/v1/groups/{group}/messages", {"text": "bob in the group"})
    wait_until(lambda: post["hash"] in {m["hash"] for m in _history(alice, group)}, 180,
               what="alice to see bob's group post",
               state=lambda: {"bob's post": next((m for m in _history(bob, group)
                                                  if m["hash"] == post["hash"]), None)})


def test_group_server_killed_during_posts(stack, friends, group):
    alice, bob = friends
    texts = [f"stream {i} {time.time_ns()}" for i in range(10)]
    server = stack.container("group-server")
    try:
        with alice.client() as ca:
            for i, text in enumerate(texts):
                ca.post(f"/v1/groups/{group}/messages", {"text": text})
                time.sleep(0.3)
                if i == 4:
                    server.kill()
        accepted = {m["body"] for m in _history(alice, group) if m["state"] == "posted"}
    finally:
        server.start()
    wait_until(lambda: _all_posted(alice, group), 300,
               what="alice's posts to be accepted after the restart",
               state=lambda: [m for m in _history(alice, group) if m["state"] == "queued"])
    wait_until(lambda: set(texts) <= {m["body"] for m in _history(bob, group)}, 300,
               what="bob to see every post",
               state=lambda: sorted(set(texts) - {m["body"] for m in _history(bob, group)}))
    bodies = {m["body"] for m in _history(bob, group)}
    assert accepted <= bodies


def test_tor_gateway_restart(stack, friends, group):
    alice, bob = friends
    stack.container("tor-gateway").restart()
    stack.wait_healthy()
    stack.wait_peer_online(alice)
    stack.wait_peer_online(bob)
    with alice.client() as ca:
        sent = ca.send(bob.onion, "after gateway restart")
        wait_delivered(ca, bob.onion, sent["id"], timeout=300)
        # Group traffic resumes too (posts and bob's sync go through the restarted gateway).
        post = ca.post(f"/v1/groups/{group}/messages", {"text": "group after gateway restart"})
    wait_until(lambda: post["hash"] in {m["hash"] for m in _history(bob, group)},
               300, what="bob to see a group post made after the gateway restart",
               state=lambda: {"alice's post": next((m for m in _history(alice, group)
                                                    if m["hash"] == post["hash"]), None)})


def test_first_contact_through_the_mailbox_while_offline(stack, friends):
    """carol does not exist in compose; alice plays her part for bob: bob shares his contact
    id, goes offline, and a message reaches him via the mailbox."""
    alice, bob = friends
    text = f"via the mailbox {time.time_ns()}"
    with bob.client() as cb:
        bob_id = cb.profile()["contact_id"]
        assert bob_id and bob_id.startswith("nyth1")
        wait_until(lambda: cb.get("/v1/mailbox")["state"]["state"] == "live", 180,
                   what="bob's card to be on the mailbox", state=lambda: cb.get("/v1/mailbox")["state"])
    stack.container("bob").stop()
    with alice.client() as ca:
        # adding bob (a contact already) by contact id teaches alice his mailbox
        ca.post("/v1/contacts", {"contact_id": bob_id, "text": "again"})
        sent = ca.send(bob.onion, text)
        wait_until(lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}")["via"]
                   == "mailbox", 300, what="the message to go via the mailbox",
                   state=lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}"))
    stack.container("bob").start()
    stack.wait_peer_online(bob)
    with bob.client() as cb:
        wait_until(lambda: text in [m["text"] for m in cb.messages(alice.onion)],
                   300, what="bob to fetch the message from his mailbox",
                   state=lambda: cb.get("/v1/mailbox")["state"])
        time.sleep(3)
        assert [m["text"] for m in cb.messages(alice.onion)].count(text) == 1


def test_stopped_bob_gets_message_exactly_once(stack, friends):
    alice, bob = friends
    text = f"while you were out {time.time_ns()}"
    stack.container("bob").stop()
    with alice.client() as ca:
        sent = ca.send(bob.onion, text)

        def message():
            return ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}")
        queued = wait_until(lambda: (m := message())["attempts"] >= 1 and m, 240,
                            what="a failed attempt", state=message)
        assert queued["state"] in ("queued", "sending")
        stack.container("bob").start()
        stack.wait_peer_online(bob)
        wait_delivered(ca, bob.onion, sent["id"], timeout=300)
    with bob.client() as cb:
        # "delivered" may mean "via the mailbox" (bob was away longer than the threshold):
        # then bob has it once he has polled his mailbox.
        wait_until(lambda: text in [m["text"] for m in cb.messages(alice.onion)],
                   300, what="bob to have the message", state=lambda: cb.get("/v1/mailbox")["state"])
        time.sleep(3)
        texts = [m["text"] for m in cb.messages(alice.onion)]
        assert texts.count(text) == 1


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_redis_restart_keeps_acknowledged_posts(stack, friends, group, how):
    alice, bob = friends
    with alice.client() as ca:
        ca.post(f"/v1/groups/{group}/messages", {"text": f"before redis {how}"})
    wait_until(lambda: _all_posted(alice, group), 180,
               what="the post to be acknowledged",
               state=lambda: [m for m in _history(alice, group) if m["state"] == "queued"])
    # Ids, not a count: the discovery index posts canaries and its directory there too.
    held = stack.group_server_blob_ids()
    redis = stack.container("redis")
    if how == "kill":
        redis.kill()  # SIGKILL: only what AOF (appendfsync always) already holds survives
        redis.start()
    else:
        redis.restart()
    stack.wait_healthy()
    lost = held - stack.group_server_blob_ids()
    assert not lost, f"{len(lost)} of {len(held)} acknowledged blobs lost"
    # And the service carries on: a new post after the restart reaches bob.
    with alice.client() as ca:
        post = ca.post(f"/v1/groups/{group}/messages", {"text": f"after redis {how}"})
    wait_until(lambda: post["hash"] in {m["hash"] for m in _history(bob, group)}, 300,
               what="a post after the redis restart to reach bob",
               state=lambda: {"alice's post": next((m for m in _history(alice, group)
                                                    if m["hash"] == post["hash"]), None)})


def test_the_web_ui_on_the_published_api_port(stack, chromium):
    """The image carries the UI (templates, scripts): a browser on the host logs in to
    alice's container on its published loopback port and sees her peer, live."""
    alice = stack.peers["alice"]
    context = chromium.new_context()
    page = context.new_page()
    answer = page.goto(f"{alice.api_url}/")
    assert answer is not None and answer.status == 200 and page.url.endswith("/ui/login")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.get_by_label("API token").fill(alice.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#status")).to_contain_text("alice")
    expect(page.locator("#status")).to_contain_text("onion: published")
    context.close()
