"""`nyth contact list`, `nyth servers` and `nyth group read` in an 80-column terminal: every
onion whole on a line (it is what `nyth contact accept` and `nyth server repin` take),
round trips shown, authors by name, remote text printed literally."""

from __future__ import annotations

from typing import Any

import pytest
from nyth.proto.identity import Identity
from nyth_cli import main as cli
from rich.console import Console
from typer.testing import CliRunner

BOB = Identity.from_seed(b"B" * 32)
CAROL = Identity.from_seed(b"C" * 32)
STRANGER = Identity.from_seed(b"S" * 32)
GROUP_SERVER = Identity.from_seed(b"G" * 32).onion
MAILBOX = Identity.from_seed(b"M" * 32).onion
GID = "0123456789abcdef" * 2

NO_SAMPLES = {"p50_ms": None, "p95_ms": None, "samples": 0}
CONTACTS: list[dict[str, Any]] = [
    {"onion": BOB.onion, "name": "bob", "status": "accepted",
     "connection": {"state": "connected", "reason": None},
     "latency": {"p50_ms": 812.0, "p95_ms": 1940.5, "samples": 12}},
    {"onion": CAROL.onion, "name": "[red]carol[/red] with a very long name indeed",
     "status": "pending_outbound",
     "connection": {"state": "unreachable", "reason": "onion descriptor not found \x1b[2J "
                    + "and a long explanation " * 5},
     "latency": NO_SAMPLES},
]
LIMITS = {"max_age_seconds": 604800, "max_blobs": 100000, "max_blob_size": 4096,
          "pow_bits": 0, "posts_per_minute": 60, "token_batch": 32}
SERVERS: list[dict[str, Any]] = [
    {"onion": GROUP_SERVER, "kind": "group", "used_for": ["group friends", "group family"],
     "pinned": {"bundle_sha256": "ab" * 32, "limits": LIMITS, "issued_at": 1},
     "pinned_at": 1.0e9, "state": "live", "reason": None, "since": 1.0e9, "next_retry_at": None,
     "presented": None, "tokens": {"tokens": 7, "state": "ready", "reason": None},
     "latency": {"p50_ms": 430.0, "p95_ms": 2210.0, "samples": 64}},
    {"onion": MAILBOX, "kind": "mailbox", "used_for": ["our mailbox"],
     "pinned": {"bundle_sha256": "cd" * 32, "limits": LIMITS, "issued_at": 1},
     "pinned_at": None, "state": "bundle_changed", "reason": "max_blobs 100000 -> 10",
     "since": None, "next_retry_at": None, "tokens": None,
     "presented": {"bundle_sha256": "ef" * 32, "limits": LIMITS, "issued_at": 2,
                   "changes": ["max_blobs 100000 -> 10", "[blink]pow_bits 0 -> 30[/blink]"],
                   "seen_at": 1.0e9},
     "latency": NO_SAMPLES},
]


def post(author: Identity, body: str, **changes: Any) -> dict[str, Any]:
    base = {"hash": "00" * 32, "author": author.public_key.hex(), "timestamp_ms": 1_000_000,
            "parents": [], "body": body, "kind": "text", "move": None, "state": "received",
            "reason": None, "next_retry_at": None, "received_at_ms": None,
            "order_time_ms": 1_000_000, "time_adjusted": None, "author_name": None,
            "mine": False}
    base.update(changes)
    return base


HISTORY = {"group": GID, "missing": [], "messages": [
    post(BOB, "hi from bob", author_name="bob"),
    post(CAROL, "hi from me", author_name="alice", mine=True, state="posted"),
    post(STRANGER, "hi from a stranger"),
    post(CAROL, "hi from carol", author_name="[red]carol[/red]"),
]}


@pytest.fixture(autouse=True)
def fake_api(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"/v1/contacts": CONTACTS, "/v1/servers": SERVERS,
               f"/v1/groups/{GID}/messages": HISTORY}

    def fake(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        return answers[path]

    monkeypatch.setattr(cli, "call", fake)
    monkeypatch.setattr(cli, "console", Console(width=80, color_system=None))


def run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["--token", "x", *args])
    assert result.exit_code == 0, result.output
    out = str(result.output)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "\x1b" not in out
    return out


def test_contact_list_shows_every_onion_whole_within_80_columns() -> None:
    lines = run("contact", "list").splitlines()
    for contact in CONTACTS:
        assert f"{contact['onion']}.onion" in [line.strip() for line in lines]
    out = "\n".join(lines)
    assert "rtt 0.8/1.9s (12)" in out
    assert "[red]carol[/red]" in out  # a name is printed as written, never as markup
    assert "onion descriptor not found" in out


def test_contact_list_without_latency_fields_still_renders() -> None:
    # An engine from before the latency fields.
    for contact in CONTACTS:
        without = {k: v for k, v in contact.items() if k != "latency"}
        assert cli._contact_lines(without)[1].strip() == f"{without['onion']}.onion"


def test_servers_fit_80_columns_in_a_few_lines_each() -> None:
    out = run("servers")
    lines = out.splitlines()
    for server in SERVERS:
        assert f"{server['onion']}.onion" in [line.strip() for line in lines]
    assert "rtt 0.4/2.2s (64)" in out
    flat = " ".join(out.split())
    assert "max_blobs 100000" in flat and "token_batch 32" in flat
    assert "used for: group friends, group family" in flat
    assert "[blink]pow_bits 0 -> 30[/blink]" in flat
    assert "tokens: 7 (ready)" in flat
    assert "nyth server repin" in flat
    # Before: a table that spread each server's limits over six lines. Now a server takes
    # its head, onion, uses, limits (two lines at most) and what it presents instead.
    assert len(lines) <= 1 + 2 * 6 + 2, out


def test_group_read_names_authors() -> None:
    out = run("group", "read", GID)
    lines = out.splitlines()
    assert any("bob: hi from bob" in line for line in lines), out
    assert any("you: hi from me" in line for line in lines), out
    # Not a contact: the key's first 8 hex digits, as before.
    assert any(f"{STRANGER.public_key.hex()[:8]}: hi from a stranger" in line
               for line in lines), out
    assert any("[red]carol[/red]: hi from carol" in line for line in lines), out
    assert BOB.public_key.hex()[:8] not in out


def test_onions_are_sent_in_the_form_the_api_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pasted in capitals or with .onion, an onion reaches the API lowercase and bare; a
    malformed one is refused before anything is sent."""
    seen: list[tuple[str, Any]] = []

    def fake(method: str, path: str, body: Any = None, **params: Any) -> Any:
        seen.append((path, body))
        return {"status": "accepted", "onion": BOB.onion, "state": "queued", "id": "0" * 32}

    monkeypatch.setattr(cli, "call", fake)
    for args in (["contact", "accept", f"{BOB.onion.upper()}.ONION"],
                 ["contact", "add", f" {BOB.onion}.onion "],
                 ["group", "invite", GID, BOB.onion.upper()]):
        CliRunner().invoke(cli.app, ["--token", "x", "--json", *args])
    assert seen[0][0] == f"/v1/contacts/{BOB.onion}/accept"
    assert seen[1][1]["onion"] == BOB.onion
    assert seen[2][1] == {"contact": BOB.onion}
    bad = CliRunner().invoke(cli.app, ["--token", "x", "contact", "accept", "not-an-onion"])
    assert bad.exit_code != 0 and len(seen) == 3
