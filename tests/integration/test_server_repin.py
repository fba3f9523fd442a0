"""An operator changes a server's limits; its peers refuse the new bundle, say what
changed, and resume once the user re-pins exactly what was shown — real peers, a real
group server and mailbox, over the private Tor network, without restarting any peer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from nyth.peer_client import ApiError
from nyth.runtime.devnet import PeerHandle, ServiceHandle, wait_until

from tests.fixtures.stack import group_history, start_group

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
NYTH = str(Path(sys.executable).parent / "nyth")
CHANGE = "max_age_seconds 604800 -> 86400"


def _nyth(peer: PeerHandle, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([NYTH, "--api", peer.api_url, "--token", peer.token, *args],
                          input=answer, capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})


def _restart_with(service: ServiceHandle, **env: str) -> None:
    onion = service.onion
    service.process.stop()
    service.process.env.update(env)
    service.process.start()
    assert service.wait_online() == onion  # same key: same onion, a new bundle


def _server(peer: PeerHandle, onion: str) -> dict[str, Any]:
    with peer.client() as c:
        return next(s for s in c.get("/v1/servers") if s["onion"] == onion)


def _refused(peer: PeerHandle, onion: str) -> dict[str, Any] | None:
    server = _server(peer, onion)
    ok = server["state"] == "bundle_changed" and server["presented"] is not None
    return server if ok and CHANGE in server["presented"]["changes"] else None


def _repin(peer: PeerHandle, onion: str, sha: str) -> Any:
    with peer.client() as c:
        return c.post(f"/v1/servers/{onion}/repin", {"bundle_sha256": sha})


def _api_error(fn: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn()
    return info.value


def _message(peer: PeerHandle, gid: str, body: str) -> Any:
    """The message with that body in peer's history, or None."""
    return next((m for m in group_history(peer, gid)["messages"] if m["body"] == body), None)


def _blob_count(server: ServiceHandle) -> int:
    count, after = 0, "0"
    while True:
        page = httpx.get(f"{server.url}/v1/blobs", params={"after": after, "limit": 1000}).json()
        count += len(page["blobs"])
        after = page["next"]
        if not page["more"]:
            return count


def test_changed_group_server_limits_are_refused_until_the_user_re_pins(devnet):
    server, (alice, bob), gid = start_group(devnet, ["alice", "bob"],
                                            NYTH_MAX_AGE_SECONDS="604800")
    with alice.client() as c:
        c.post(f"/v1/groups/{gid}/messages", {"text": "before"})
    wait_until(lambda: _message(bob, gid, "before"), 120, what="bob to see the first post",
               state=lambda: _server(bob, server.onion))
    listed = _server(alice, server.onion)
    assert listed["kind"] == "group" and listed["used_for"] == ["group friends"]
    assert listed["pinned"]["limits"]["max_age_seconds"] == 604800
    assert listed["presented"] is None and listed["pinned_at"]
    old_sha = listed["pinned"]["bundle_sha256"]

    _restart_with(server, NYTH_MAX_AGE_SECONDS="86400")

    # Both members refuse the new bundle and say what changed and what to run.
    for peer in (alice, bob):
        refused = wait_until(lambda p=peer: _refused(p, server.onion), 180,
                             what=f"{peer.name} to refuse the changed bundle",
                             state=lambda p=peer: _server(p, server.onion))
        assert f"nyth server repin {server.onion}" in refused["reason"]
        assert refused["presented"]["limits"]["max_age_seconds"] == 86400
        assert refused["pinned"]["bundle_sha256"] == old_sha
    new_sha = refused["presented"]["bundle_sha256"]
    assert new_sha != old_sha

    # Nothing goes to the server meanwhile; the post says why and what to run.
    blobs = _blob_count(server)
    with alice.client() as c:
        c.post(f"/v1/groups/{gid}/messages", {"text": "while refused"})
    queued = wait_until(lambda: (m := _message(alice, gid, "while refused")) and m["reason"] and m,
                        60, what="the post to be held with a reason",
                        state=lambda: _message(alice, gid, "while refused"))
    assert queued["state"] == "queued" and "nyth server repin" in queued["reason"]
    assert _blob_count(server) == blobs

    # Bad input is a 4xx, never a 500; an onion we never pinned is a 404.
    with alice.client() as c:
        assert _api_error(lambda: c.post("/v1/servers/not-an-onion/repin",
                                         {"bundle_sha256": new_sha})).status == 422
        assert _api_error(lambda: _repin(alice, server.onion, "abc")).status == 422
        assert _api_error(lambda: _repin(alice, server.onion, "g" * 64)).status == 422
        typo = server.onion[:10] + ("b" if server.onion[10] != "b" else "c") + server.onion[11:]
        assert _api_error(lambda: _repin(alice, typo, new_sha)).status == 422
        assert _api_error(lambda: _repin(alice, bob.onion, new_sha)).status == 404
        paths = c.request("GET", "/openapi.json")["paths"]
    assert "409" in paths["/v1/servers/{onion}/repin"]["post"]["responses"]
    assert "get" in paths["/v1/servers"]

    # A hash other than what the server presents: 409, and nothing changes.
    conflict = _api_error(lambda: _repin(alice, server.onion, old_sha))
    assert conflict.status == 409 and "nothing was re-pinned" in conflict.message
    assert "max_age_seconds" in conflict.message
    after_conflict = _server(alice, server.onion)
    assert after_conflict["pinned"]["bundle_sha256"] == old_sha
    assert after_conflict["state"] == "bundle_changed"
    assert _message(alice, gid, "while refused")["state"] == "queued"

    # The reviewed hash: pinned, and the held post goes out without restarting alice.
    repinned = _repin(alice, server.onion, new_sha)
    assert repinned["pinned"]["bundle_sha256"] == new_sha and repinned["presented"] is None
    assert repinned["pinned"]["limits"]["max_age_seconds"] == 86400
    wait_until(lambda: _message(alice, gid, "while refused")["state"] == "posted", 120,
               what="alice's held post to be accepted after the re-pin",
               state=lambda: _message(alice, gid, "while refused"))
    wait_until(lambda: _server(alice, server.onion)["state"] == "live", 120,
               what="alice's sync to be live again", state=lambda: _server(alice, server.onion))

    # bob uses the command: `nyth servers` shows the change; declining keeps the refusal.
    table = _nyth(bob, "servers")
    assert table.returncode == 0 and "bundle_changed" in table.stdout and CHANGE in table.stdout
    declined = _nyth(bob, "server", "repin", server.onion, answer="n\n")
    assert declined.returncode == 1 and "nothing was re-pinned" in declined.stdout
    assert _server(bob, server.onion)["state"] == "bundle_changed"
    accepted = _nyth(bob, "server", "repin", f"{server.onion}.onion", answer="y\n")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert CHANGE in accepted.stdout and new_sha in accepted.stdout and "re-pinned" in accepted.stdout

    # Sync resumed for bob (he gets the post held during the refusal) and both ways work.
    wait_until(lambda: _message(bob, gid, "while refused"), 120,
               what="bob to receive the post sent while the bundle was refused",
               state=lambda: _server(bob, server.onion))
    with bob.client() as c:
        c.post(f"/v1/groups/{gid}/messages", {"text": "after"})
    wait_until(lambda: _message(alice, gid, "after"), 120, what="alice to read bob's new post",
               state=lambda: _server(alice, server.onion))


def test_changed_mailbox_limits_are_refused_until_the_user_re_pins(devnet):
    mailbox = devnet.add_mailbox(NYTH_POW_BITS="8", NYTH_MAX_AGE_SECONDS="604800")
    mailbox.wait_online()
    alice = devnet.add_peer("alice", NYTH_MAILBOX=mailbox.onion, NYTH_MAILBOX_POLL_SECONDS="1")
    alice.wait_online()
    with alice.client() as c:
        wait_until(lambda: c.get("/v1/mailbox")["state"]["state"] == "live", 120,
                   what="alice's mailbox to be live", state=lambda: c.get("/v1/mailbox")["state"])
    assert _server(alice, mailbox.onion)["used_for"] == ["our mailbox"]

    _restart_with(mailbox, NYTH_MAX_AGE_SECONDS="86400")

    refused = wait_until(lambda: _refused(alice, mailbox.onion), 180,
                         what="alice to refuse the mailbox's changed bundle",
                         state=lambda: _server(alice, mailbox.onion))
    assert refused["kind"] == "mailbox" and f"nyth server repin {mailbox.onion}" in refused["reason"]
    with alice.client() as c:
        assert c.get("/v1/mailbox")["state"]["state"] == "bundle_changed"
    conflict = _api_error(lambda: _repin(alice, mailbox.onion, refused["pinned"]["bundle_sha256"]))
    assert conflict.status == 409
    assert _server(alice, mailbox.onion)["pinned"] == refused["pinned"]

    repinned = _repin(alice, mailbox.onion, refused["presented"]["bundle_sha256"])
    assert repinned["pinned"]["limits"]["max_age_seconds"] == 86400
    with alice.client() as c:
        wait_until(lambda: c.get("/v1/mailbox")["state"]["state"] == "live", 60,
                   what="alice's mailbox polling to resume after the re-pin",
                   state=lambda: c.get("/v1/mailbox")["state"])
