"""The `nyth` command against real peer engines (over the private Tor network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nyth.runtime.devnet import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NYTH = str(Path(sys.executable).parent / "nyth")


def _nyth(peer, *args: str) -> str:
    result = subprocess.run([NYTH, "--api", peer.api_url, "--token", peer.token, *args],
                            capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_cli_contact_message_and_errors(devnet):
    alice, bob = devnet.add_peer("alice"), devnet.add_peer("bob")
    alice.wait_online()
    bob.wait_online()
    assert json.loads(_nyth(alice, "--json", "profile", "show"))["onion"] == alice.onion
    assert "pending_outbound" in _nyth(alice, "contact", "add", bob.onion, "--text", "hi")
    wait_until(lambda: alice.onion in _nyth(bob, "contact", "list"), 60, what="the request")
    assert "accepted" in _nyth(bob, "contact", "accept", alice.onion)
    wait_until(lambda: "accepted" in _nyth(alice, "contact", "list"), 60, what="acceptance",
               state=lambda: _nyth(alice, "contact", "list"))
    msg_id = _nyth(alice, "send", bob.onion, "hello from the cli").split()[0]
    wait_until(lambda: json.loads(_nyth(alice, "--json", "messages", bob.onion))[0]["state"]
               == "delivered", 60, what="delivery",
               state=lambda: json.loads(_nyth(alice, "--json", "messages", bob.onion)))
    assert "hello from the cli" in _nyth(bob, "messages", alice.onion)
    assert len(msg_id) == 32
    # Errors are clear and exit non-zero: a wrong token, a malformed address.
    bad = subprocess.run([NYTH, "--api", alice.api_url, "--token", "wrong", "status"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "401" in bad.stdout
    swapped = "b" if bob.onion[10] != "b" else "c"
    typo = subprocess.run([NYTH, "--api", alice.api_url, "--token", alice.token, "contact", "add",
                           bob.onion[:10] + swapped + bob.onion[11:]],
                          capture_output=True, text=True, timeout=60)
    assert typo.returncode == 1 and "422" in typo.stdout, typo.stdout
