"""`nyth --json <command>` prints the API's answer as JSON, never text, for every command
(errors included), so scripts can parse whatever the CLI prints."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from nyth.peer_client import ApiError
from nyth.proto.identity import Identity
from nyth_cli import main as cli
from rich.console import Console
from typer.testing import CliRunner

BOB = Identity.from_seed(b"B" * 32).onion
OLD = Identity.from_seed(b"O" * 32).onion
NEW = Identity.from_seed(b"N" * 32).onion
SERVER = Identity.from_seed(b"G" * 32).onion
GID = "0123456789abcdef" * 2
MID = "fedcba9876543210" * 2

MESSAGE = {"id": MID, "onion": BOB, "kind": "text", "direction": "out", "text": "hi",
           "timestamp_ms": 1, "state": "queued", "reason": "[red]x[/red]", "next_retry_at": 2.0,
           "attempts": 1, "delivered_at": None, "via": None}
CONTACT = {"onion": BOB, "name": "bob", "status": "accepted", "mailbox": OLD,
           "connection": {"state": "connected", "reason": None},
           "mailbox_change": {"from": OLD, "to": NEW, "since": 1.0},
           "latency": {"p50_ms": 800.0, "p95_ms": 1900.0, "samples": 3}}
GROUP = {"id": GID, "name": "friends", "messages": 1, "missing": 0, "servers": [SERVER],
         "recovery": {"strategies": []}}
SERVER_VIEW = {"onion": SERVER, "kind": "group", "used_for": [], "state": "bundle_changed",
               "presented": {"bundle_sha256": "ab" * 32, "limits": {}, "changes": ["x"]},
               "pinned": {"limits": {}}}

# Every command of the CLI with arguments that reach the API (devnet runs processes, not
# the API, and has no JSON to print).
COMMANDS: dict[str, list[str]] = {
    "profile create": ["profile", "create", "alice", "--passphrase", "pw"],
    "profile unlock": ["profile", "unlock", "--passphrase", "pw"],
    "profile show": ["profile", "show"],
    "status": ["status"],
    "contact add": ["contact", "add", BOB, "--text", "hi"],
    "contact list": ["contact", "list"],
    "contact mailbox-confirm": ["contact", "mailbox-confirm", BOB, NEW, "--yes"],
    "contact accept": ["contact", "accept", BOB],
    "contact refuse": ["contact", "refuse", BOB],
    "send": ["send", BOB, "hi"],
    "messages": ["messages", BOB],
    "retry": ["retry", BOB, MID],
    "cancel": ["cancel", BOB, MID],
    "group create": ["group", "create", "friends", "--server", SERVER],
    "group list": ["group", "list"],
    "group invite": ["group", "invite", GID, BOB],
    "group invites": ["group", "invites"],
    "group join": ["group", "join", GID],
    "group post": ["group", "post", GID, "hello"],
    "group read": ["group", "read", GID],
    "group status": ["group", "status", "friends"],
    "group move": ["group", "move", GID, SERVER],
    "group recovery": ["group", "recovery", GID, "member"],
    "mailbox": ["mailbox"],
    "discover": ["discover"],
    "servers": ["servers"],
    "server repin": ["server", "repin", SERVER, "--yes"],
    "events": ["events"],
}


def answer(method: str, path: str) -> Any:
    """A plausible answer per route; the text rendering would read these fields."""
    if path == "/v1/groups" and method == "GET":
        return [GROUP]
    if path == "/v1/servers":
        return [SERVER_VIEW]
    if path == "/v1/contacts" and method == "GET":
        return [CONTACT]
    if path.startswith("/v1/contacts/") and path.endswith("/messages") and method == "GET":
        return [MESSAGE]
    if "/messages/" in path or path.endswith(f"{BOB}/messages"):
        return MESSAGE
    if path.startswith("/v1/contacts"):
        return CONTACT
    if path == "/v1/groups/invites":
        return [{"id": GID, "name": "friends", "from": BOB}]
    if path.endswith("/invite"):
        return {"state": "queued", "reason": None, "next_retry_at": None}
    if path.endswith(f"{GID}/messages") and method == "POST":
        return {"hash": "ab" * 32, "state": "queued", "reason": None, "next_retry_at": None}
    if path.endswith(f"{GID}/messages"):
        return {"group": GID, "messages": [], "missing": []}
    if path.startswith("/v1/groups"):
        return {**GROUP, "epoch": 1}
    return {"path": path, "name": "alice", "address": f"{BOB}.onion"}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []

    def fake(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        seen.append((method, path))
        return answer(method, path)

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

        def events(self) -> list[dict[str, Any]]:
            return [{"type": "message", "message": MESSAGE}, {"type": "onion", "state": "up"}]

    monkeypatch.setattr(cli, "call", fake)
    monkeypatch.setattr(cli, "client", FakeClient)
    monkeypatch.setattr(cli, "console", Console(width=80, color_system=None))
    return seen


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["--token", "x", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, str(result.output)


def _leaves(group: Any, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):   # a group (typer's own click, not click's)
            names |= _leaves(command, f"{prefix}{name} ")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_every_command_is_covered() -> None:
    commands = {c for c in _leaves(typer.main.get_group(cli.app)) if not c.startswith("devnet")}
    assert commands == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_prints_json_only(calls: list[Any], name: str) -> None:
    code, out = invoke("--json", *COMMANDS[name])
    assert code == 0, out
    if name == "events":   # a stream: one JSON document per line
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["type"] for e in events] == ["message", "onion"]
        return
    shown = json.loads(out)
    assert calls, "the command called the API"
    # group status shows its group out of the list it asked for.
    assert shown == (GROUP if name == "group status" else answer(*calls[-1]))


def test_json_after_the_command_is_honoured_too(calls: list[Any]) -> None:
    code, out = invoke("group", "status", "friends", "--json")
    assert code == 0 and json.loads(out)["id"] == GID
    code, out = invoke("group", "status", "nosuch", "--json")
    assert code == 1 and "no group named nosuch" in json.loads(out)["error"]


def test_commands_that_would_ask_want_yes_under_json(calls: list[Any]) -> None:
    for args in (["contact", "mailbox-confirm", BOB, NEW], ["server", "repin", SERVER]):
        code, out = invoke("--json", *args)
        assert code == 1 and "--yes" in json.loads(out)["error"]
    assert not [c for c in calls if c[0] == "POST"]


def test_api_errors_are_json_under_json(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

        def post(self, path: str, body: Any) -> Any:
            raise ApiError(409, "no pending contact request from [red]that[/red] address")

    monkeypatch.setattr(cli, "client", Refusing)
    code, out = invoke("--json", "contact", "accept", BOB)
    assert code == 1
    assert json.loads(out) == {"error": "error 409: no pending contact request from [red]that"
                                        "[/red] address", "status": 409}
    code, out = invoke("contact", "accept", BOB)
    assert code == 1 and "error 409" in out and not out.lstrip().startswith("{")
