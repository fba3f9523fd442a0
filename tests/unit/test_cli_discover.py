"""`nyth discover` and `nyth group create --auto` render the peer's discovery view: in an
80-column terminal with every onion whole on a line (copyable), remote text printed
literally, and --json unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nyth_cli import main as cli
from rich.console import Console
from typer.testing import CliRunner

UP = "u" * 56
DOWN = "d" * 56
INDEX_A = "a" * 56
INDEX_B = "b" * 56


def server(onion: str, rank: int, **changes: Any) -> dict[str, Any]:
    base = {
        "rank": rank, "kind": "group-server", "onion": onion, "label": "[red]ops[/red]",
        "state": "up", "reason": "up: 12/12 probes answered (100%), latency p50 0.4 s p95 "
                                 "0.9 s, kept 3 canaries " + "and more words " * 6,
        "availability": 1.0, "probes": 12, "probes_ok": 12, "latency_p50_ms": 400,
        "latency_p95_ms": 900, "audit": {"state": "kept", "passed": 3, "at": 1.9e9},
        "limits": {"max_blobs": 100000}, "first_seen": 1.8e9, "listed_by": [INDEX_A, INDEX_B],
        "disagreements": [], "eligible": True, "not_eligible": None}
    base.update(changes)
    return base


VIEW = {
    "servers": [
        server(UP, 1),
        server(DOWN, 2, state="down", availability=0.5, probes_ok=6, latency_p95_ms=None,
               audit={"state": "not audited", "passed": 0, "at": None}, label="",
               reason="down: the last 3 probes failed (\x1b[2Jno answer)",
               disagreements=["state: aaaaaaaa… says down, bbbbbbbb… says up"],
               eligible=False, not_eligible="down"),
    ],
    "indexes": [
        {"onion": INDEX_A, "state": "ok", "source": "directory group", "epoch": 12,
         "issued_at": 1.9e9, "expires_at": 1.9e9, "fetched_at": 1.9e9, "entries": 2,
         "directory_servers": [UP], "last_refusal": "a directory in the directory group: "
         "the directory's signature does not verify", "refused_at": 1.9e9,
         "reason": "no directory from the index (no answer)"},
        {"onion": INDEX_B, "state": "waiting", "source": None, "epoch": None, "issued_at": None,
         "expires_at": None, "fetched_at": None, "entries": 0, "directory_servers": [],
         "last_refusal": None, "refused_at": None, "reason": "not read yet"},
    ],
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any, Any]]:
    seen: list[tuple[str, str, Any, Any]] = []

    def fake(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        seen.append((method, path, body, params))
        if path == "/v1/groups":
            choice = [{"onion": UP, "reason": "rank 1 of 2; operator 'ops'"},
                      {"onion": DOWN, "reason": "rank 2 of 2 [blink]x[/blink]"}]
            return {"id": "0" * 32, "name": "friends", "servers": [UP, DOWN],
                    "choice": choice if body and body["auto"] else None}
        return VIEW

    monkeypatch.setattr(cli, "call", fake)
    monkeypatch.setattr(cli, "console", Console(width=80, color_system=None))
    return seen


def run(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["--token", "x", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_discover_fits_80_columns_with_whole_onions(calls: list[Any]) -> None:
    out = run("discover")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    for onion in (UP, DOWN, INDEX_A, INDEX_B):
        assert any(f"{onion}.onion" in line for line in lines), onion
    assert "[red]ops[/red]" in out  # a label is printed as written, never as markup
    assert "\x1b" not in out
    assert "kept 3" in out and "100%" in out and "0.4/0.9s" in out and "0.4/-s" in out
    assert "state: aaaaaaaa… says down, bbbbbbbb… says up" in out
    assert "epoch 12 from the directory group" in out and "signature does not verify" in out
    assert out.index("indexes disagree") < out.index("indexes:")
    assert "--auto: would pick it" in out and "--auto: would not pick it: down" in out


def test_discover_kind_and_json(calls: list[Any]) -> None:
    assert json.loads(run("--json", "discover")) == VIEW
    assert json.loads(run("discover", "--kind", "mailbox", "--json")) == VIEW
    assert calls[-1][3] == {"kind": "mailbox"}
    bad = CliRunner().invoke(cli.app, ["--token", "x", "discover", "--kind", "relay"])
    assert bad.exit_code != 0


def test_group_create_auto_says_why(calls: list[Any]) -> None:
    out = run("group", "create", "friends", "--auto", "--k", "2")
    assert calls[-1][2] == {"name": "friends", "servers": [], "auto": True, "k": 2}
    assert f"{UP}.onion" in out and "rank 1 of 2; operator 'ops'" in out
    assert "[blink]x[/blink]" in out
    assert json.loads(run("group", "create", "friends", "--auto", "--json"))["choice"]
    manual = run("group", "create", "friends", "--server", UP)
    assert calls[-1][2] == {"name": "friends", "servers": [UP], "auto": False}
    assert "why" not in manual
    neither = CliRunner().invoke(cli.app, ["--token", "x", "group", "create", "friends"])
    assert neither.exit_code != 0
