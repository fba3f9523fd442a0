"""`nyth group status` and `nyth group move` render the API's group view: readable in an
80-column terminal, remote text printed literally, and --json unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nyth_cli import main as cli
from rich.console import Console
from typer.testing import CliRunner

ALICE = "a" * 56
SERVER = "s" * 56
OLD = "o" * 56
GID = "0123456789abcdef" * 2


def view(**changes: Any) -> dict[str, Any]:
    gap = {"hash": "ab" * 32, "found_at": 1.0e9, "found_via": f"server {SERVER}", "attempts": 2,
           "recovered_at": None, "recovered_by": None}
    base = {
        "id": GID, "name": "friends", "version": 2, "owner": ALICE, "owned": False, "epoch": 1,
        "servers": [SERVER], "draining": [{"onion": OLD, "until": 1.9e9}],
        "created_at": 1.0e9, "messages": 12, "missing": 1,
        "server_state": {SERVER: {"state": "live", "reason": None}},
        "recovery": {
            "strategies": ["refetch", "server", "member", "move"], "found": 3,
            "recovered": {"member": 1, "server": 1},
            "open": [{**gap, "state": "open", "doing": None, "next_attempt_at": 1.9e9,
                      "reason": f"not on {SERVER[:8]}… (re-read from the start); [red]no "
                                "member online[/red] " + "very long reason " * 8}],
            "recent": [{**gap, "state": "recovered", "reason": None, "doing": None,
                        "next_attempt_at": None, "recovered_at": 1.0e9,
                        "recovered_by": {"method": "member", "source": ALICE, "name": "alice"}}],
            "untracked": 0, "moves_ignored": [{"hash": "cd" * 32, "reason": "not the owner's"}]},
    }
    base.update(changes)
    return base


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []

    def fake(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        seen.append((method, path, body))
        return [view()] if path == "/v1/groups" else view(epoch=2)

    monkeypatch.setattr(cli, "call", fake)
    monkeypatch.setattr(cli, "console", Console(width=80, color_system=None))
    return seen


def run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["--token", "x", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_status_fits_80_columns_and_says_what_happened(calls: Any) -> None:
    out = run("group", "status", "friends")
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "epoch 1" in out and "gaps: found 3, recovered member 1, server 1, open 1" in out
    assert "[red]no member online[/red]" in out  # a reason is text, not markup
    assert "recovered abababababab by member alice" in out
    assert "draining oooooooooooo…" in out and "not the owner's" in out


def test_status_by_id_and_json(calls: Any) -> None:
    assert json.loads(run("group", "status", GID, "--json")) == view()
    assert json.loads(run("--json", "group", "status", GID)) == view()


def test_an_unknown_or_ambiguous_name_is_refused(calls: Any) -> None:
    result = CliRunner().invoke(cli.app, ["--token", "x", "group", "status", "nobody"])
    assert result.exit_code == 1 and "no group named nobody" in result.output


def test_move_posts_the_servers(calls: Any) -> None:
    out = run("group", "move", GID, SERVER, OLD)
    assert calls[-1] == ("POST", f"/v1/groups/{GID}/move", {"servers": [SERVER, OLD]})
    assert "moved friends to epoch 2" in out
    assert json.loads(run("group", "move", GID, SERVER, "--json"))["epoch"] == 2


def test_recovery_patches_the_strategies(calls: Any) -> None:
    run("group", "recovery", GID, "member", "refetch")
    assert calls[-1] == ("PATCH", f"/v1/groups/{GID}", {"recovery": ["member", "refetch"]})
    run("group", "recovery", GID)
    assert calls[-1] == ("PATCH", f"/v1/groups/{GID}", {"recovery": []})
