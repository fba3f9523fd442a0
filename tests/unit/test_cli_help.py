"""Every command of `nyth` says what it does in one line, and its help reads well in an
80-column terminal: the command lists show that line whole, and longer paragraphs are
rewrapped to the terminal instead of keeping the docstring's own line breaks."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest
import typer
from nyth_cli import main as cli
from typer.testing import CliRunner


def _commands() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        found.append((prefix, command))
        # (typer's groups: its own click, so no isinstance against click.Group)
        for name, sub in getattr(command, "commands", {}).items():
            walk(f"{prefix} {name}".strip(), sub)

    walk("", typer.main.get_command(cli.app))
    return found


COMMANDS = _commands()


def test_the_walk_finds_every_command() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"group create", "contact add", "server repin", "devnet up", "mailbox"} <= names
    assert len(names) > 30


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n or "nyth" for n, _ in COMMANDS])
def test_every_command_has_a_one_line_summary(name: str, command: Any) -> None:
    summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
    assert summary, f"`nyth {name}` has no help"
    assert "\n" not in summary, f"`nyth {name}`: its first paragraph spans lines: {summary!r}"


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n or "nyth" for n, _ in COMMANDS])
def test_help_at_80_columns(name: str, command: Any) -> None:
    result = CliRunner().invoke(cli.app, [*name.split(), "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    # Every paragraph of the help is rewrapped to the terminal: none of it ends a line
    # short when the next line of the same paragraph would have fitted there.
    for first, second in itertools.pairwise(lines):
        text, following = first.strip(" │"), second.strip(" │")
        if text and following and not following.startswith(("-", "*", "╰", "╭")):
            word = following.split()[0]
            gap = 80 - 4 - len(first.rstrip(" │"))
            assert not (text.endswith(",") and len(word) + 1 < gap), (
                f"`nyth {name} --help` breaks a line early:\n{first}\n{second}")
