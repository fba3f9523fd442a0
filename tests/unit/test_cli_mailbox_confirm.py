"""`nyth contact mailbox-confirm` and the warnings that lead to it, over a stubbed API."""

from __future__ import annotations

from typing import Any

import nyth_cli.main as cli
import pytest
from nyth.proto.identity import Identity
from typer.testing import CliRunner

BOB = Identity.from_seed(b"B" * 32).onion
OLD = Identity.from_seed(b"R" * 32).onion
NEW = Identity.from_seed(b"E" * 32).onion
CONTACT = {"onion": BOB, "status": "accepted", "mailbox": OLD, "name": "bob",
           "connection": {"state": "disconnected", "reason": None},
           "mailbox_change": {"from": OLD, "to": NEW, "since": 1.0}}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []

    def call(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        seen.append((method, path, body))
        if path == "/v1/contacts":
            return [CONTACT]
        if path.endswith("/mailbox/confirm"):
            assert body is not None
            return {**CONTACT, "mailbox": body["mailbox"], "mailbox_change": None}
        return CONTACT

    monkeypatch.setattr(cli, "call", call)
    return seen


def run(*args: str, answer: str = "") -> str:
    """The output with Rich's line wrapping undone."""
    result = CliRunner().invoke(cli.app, list(args), input=answer)
    out = " ".join(result.output.split())
    return out + (f" [exit {result.exit_code}]" if result.exit_code else "")


def test_list_warns_about_a_proposed_mailbox(calls: list[Any]) -> None:
    out = run("contact", "list")
    assert f"nyth contact mailbox-confirm {BOB} {NEW}" in out


def test_switching_asks_first_and_posts_the_new_mailbox(calls: list[Any]) -> None:
    out = run("contact", "mailbox-confirm", BOB, NEW + ".onion", answer="n\n")
    assert "nothing changed" in out and "[exit 1]" in out
    assert not [c for c in calls if c[0] == "POST"]
    out = run("contact", "mailbox-confirm", BOB, NEW, answer="y\n")
    assert calls[-1] == ("POST", f"/v1/contacts/{BOB}/mailbox/confirm", {"mailbox": NEW})
    assert f"mailbox {NEW}.onion" in out


def test_keeping_the_current_mailbox_needs_no_question(calls: list[Any]) -> None:
    out = run("contact", "mailbox-confirm", BOB, OLD)
    assert calls[-1] == ("POST", f"/v1/contacts/{BOB}/mailbox/confirm", {"mailbox": OLD})
    assert "kept; the proposal is dismissed" in out
