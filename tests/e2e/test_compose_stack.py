"""The whole network in containers: normal use, then breaking things on purpose.

Tests share one compose project (bringing it up costs a minute); each destructive test
restores what it broke, so the order below is also a sequence of recoveries."""

from __future__ import annotations

import time

import pytest
from nyth.runtime.devnet import wait_until

from tests.fixtures.stack import befriend, wait_delivered

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

_group: dict[str, str] = {}


def _history(peer, gid):
    with peer.client() as c:
        return c.get(f"/v1/groups/{gid}/messages")["messages"]


def _all_posted(peer, gid) -> bool:
    """Every post of this peer's own was acknowledged by the server (others' are "received")."""
    return not any(m["state"] == "queued" for m in _history(peer, gid))


def _ensure_friends(alice, bob):
    with alice.client() as ca:
        status = {c["onion"]: c["status"] for c in ca.get("/v1/contacts")}
    if status.get(bob.onion) != "accepted":
        befriend(alice, bob, timeout=180)


def _group_id(stack) -> str:
    if "id" not in _group:
        alice, bob = stack.peers["alice"], stack.peers["bob"]
        _ensure_friends(alice, bob)
        with alice.client() as ca, bob.client() as cb:
            group = ca.post("/v1/groups", {"name": "e2e", "servers": [stack.group_server_onion()]})
            ca.post(f"/v1/groups/{group['id']}/invite", {"contact": bob.onion})
            wait_until(lambda: any(i["id"] == group["id"] for i in cb.get("/v1/groups/invites")),
                       180, what="bob to receive the invite")
            cb.post(f"/v1/groups/invites/{group['id']}/accept")
        _group["id"] = group["id"]
    return _group["id"]


# What each service may read under /secrets: its own passphrase and, if it talks to tor,
# the control password. Nothing else (a peer must not be able to unlock another's keys).
_SECRETS = {
    "tor-network": set(),
    "tor-gateway": {"/secrets/tor/control-password"},
    "redis": set(),
    "mailbox-redis": set(),
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
    # works (every test here relies on it), watching others' circuits does not.
    control = (
        "import socket\n"
        "pw = open('/secrets/tor/control-password').read().strip()\n"
        "s = socket.create_connection(('tor-gateway', 9051), 5); f = s.makefile('rwb')\n"
        "def ask(line):\n"
        " f.write(line.encode() + b'\\r\\n'); f.flush(); return f.readline().decode().strip()\n"
        "print(ask('AUTHENTICATE \"%s\"' % pw)); print(ask('GETINFO circuit-status'))\n"
        "print(ask('SETEVENTS STREAM')); print(ask('SIGNAL HALT'))\n"
    )
    answers = stack.exec_python("alice", control).splitlines()
    assert answers[0] == "250 OK", answers
    assert all(line.startswith("510 ") for line in answers[1:]), answers
    assert stack.container("tor-gateway").attrs["State"]["Running"]

    # Each Redis is reachable from its own service only.
    assert reach("group-server", "redis", 6379) == "open"
    assert reach("mailbox", "mailbox-redis", 6379) == "open"
    assert reach("group-server", "mailbox-redis", 6379) != "open"
    assert reach("mailbox", "redis", 6379) != "open"


def test_p2p_message_and_group_post(stack):
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    _ensure_friends(alice, bob)
    with alice.client() as ca, bob.client() as cb:
        sent = ca.send(bob.onion, "hello through containers")
        wait_delivered(ca, bob.onion, sent["id"], timeout=180)
        assert [m["text"] for m in cb.messages(alice.onion)] == ["hello through containers"]
    gid = _group_id(stack)
    with bob.client() as cb:
        cb.post(f"/v1/groups/{gid}/messages", {"text": "bob in the group"})
    wait_until(lambda: [m["body"] for m in _history(alice, gid)] == ["bob in the group"], 180,
               what="alice to see bob's group post")


def test_group_server_killed_during_posts(stack):
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    gid = _group_id(stack)
    before = len(_history(alice, gid))
    texts = [f"stream {i}" for i in range(10)]
    server = stack.container("group-server")
    with alice.client() as ca:
        for i, text in enumerate(texts):
            ca.post(f"/v1/groups/{gid}/messages", {"text": text})
            time.sleep(0.3)
            if i == 4:
                server.kill()
    accepted = {m["body"] for m in _history(alice, gid) if m["state"] == "posted"}
    server.start()
    wait_until(lambda: _all_posted(alice, gid), 300,
               what="alice's posts to be accepted after the restart")
    wait_until(lambda: len(_history(bob, gid)) == before + len(texts), 300,
               what="bob to see every post")
    bodies = {m["body"] for m in _history(bob, gid)}
    assert accepted <= bodies and set(texts) <= bodies


def test_tor_gateway_restart(stack):
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    stack.container("tor-gateway").restart()
    stack.wait_healthy()
    stack.wait_peer_online(alice)
    stack.wait_peer_online(bob)
    with alice.client() as ca:
        sent = ca.send(bob.onion, "after gateway restart")
        wait_delivered(ca, bob.onion, sent["id"], timeout=300)
        # Group traffic resumes too (posts and bob's sync go through the restarted gateway).
        gid = _group_id(stack)
        ca.post(f"/v1/groups/{gid}/messages", {"text": "group after gateway restart"})
    wait_until(lambda: "group after gateway restart" in {m["body"] for m in _history(bob, gid)},
               300, what="bob to see a group post made after the gateway restart")


def test_first_contact_through_the_mailbox_while_offline(stack):
    """carol does not exist in compose; alice plays her part for bob: bob shares his contact
    id, goes offline, and a new contact's request and message reach him via the mailbox."""
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    with bob.client() as cb:
        bob_id = cb.profile()["contact_id"]
        assert bob_id and bob_id.startswith("nyth1")
        wait_until(lambda: cb.get("/v1/mailbox")["state"]["state"] == "live", 180,
                   what="bob's card to be on the mailbox")
    stack.container("bob").stop()
    with alice.client() as ca:
        # alice already knows bob; adding him by contact id teaches her his mailbox
        ca.post("/v1/contacts", {"contact_id": bob_id, "text": "again"})
        sent = ca.send(bob.onion, "via the mailbox")
        wait_until(lambda: ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}")["via"]
                   == "mailbox", 300, what="the message to go via the mailbox")
    stack.container("bob").start()
    stack.wait_peer_online(bob)
    with bob.client() as cb:
        wait_until(lambda: "via the mailbox" in [m["text"] for m in cb.messages(alice.onion)],
                   300, what="bob to fetch the message from his mailbox")
        time.sleep(3)
        assert [m["text"] for m in cb.messages(alice.onion)].count("via the mailbox") == 1


def test_stopped_bob_gets_message_exactly_once(stack):
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    stack.container("bob").stop()
    with alice.client() as ca:
        sent = ca.send(bob.onion, "while you were out")
        queued = wait_until(
            lambda: (m := ca.get(f"/v1/contacts/{bob.onion}/messages/{sent['id']}"))["attempts"] >= 1
            and m, 240, what="a failed attempt")
        assert queued["state"] in ("queued", "sending")
        stack.container("bob").start()
        stack.wait_peer_online(bob)
        wait_delivered(ca, bob.onion, sent["id"], timeout=300)
    with bob.client() as cb:
        # "delivered" may mean "via the mailbox" (bob was away longer than the threshold):
        # then bob has it once he has polled his mailbox.
        wait_until(lambda: "while you were out" in [m["text"] for m in cb.messages(alice.onion)],
                   300, what="bob to have the message")
        time.sleep(3)
        texts = [m["text"] for m in cb.messages(alice.onion)]
        assert texts.count("while you were out") == 1


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_redis_restart_keeps_acknowledged_posts(stack, how):
    alice, bob = stack.peers["alice"], stack.peers["bob"]
    gid = _group_id(stack)
    with alice.client() as ca:
        ca.post(f"/v1/groups/{gid}/messages", {"text": f"before redis {how}"})
    wait_until(lambda: _all_posted(alice, gid), 180,
               what="the post to be acknowledged")
    count = stack.group_server_blob_count()
    redis = stack.container("redis")
    if how == "kill":
        redis.kill()  # SIGKILL: only what AOF (appendfsync always) already holds survives
        redis.start()
    else:
        redis.restart()
    stack.wait_healthy()
    assert stack.group_server_blob_count() == count
    # And the service carries on: a new post after the restart reaches bob.
    with alice.client() as ca:
        ca.post(f"/v1/groups/{gid}/messages", {"text": f"after redis {how}"})
    wait_until(lambda: f"after redis {how}" in {m["body"] for m in _history(bob, gid)}, 300,
               what="a post after the redis restart to reach bob")
