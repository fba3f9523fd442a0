"""Shared settings helpers (nyth.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nyth.config import ConfigError, format_host_port, parse_host_port, read_secret


def test_read_secret_from_env_or_file(tmp_path: Path) -> None:
    assert read_secret("token", {"NYTH_TOKEN": "abc"}) == "abc"
    secret = tmp_path / "token"
    secret.write_text("from-file\r\n")
    assert read_secret("TOKEN", {"NYTH_TOKEN_FILE": str(secret)}) == "from-file"
    assert read_secret("token", {}) is None
    with pytest.raises(ConfigError, match="NYTH_TOKEN or NYTH_TOKEN_FILE is required"):
        read_secret("token", {}, required=True)
    with pytest.raises(ConfigError, match="only one of"):
        read_secret("token", {"NYTH_TOKEN": "a", "NYTH_TOKEN_FILE": str(secret)})


def test_read_secret_refuses_huge_and_binary_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_secret("token", {"NYTH_TOKEN_FILE": str(big)})
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secret("token", {"NYTH_TOKEN_FILE": str(binary)})


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9051", ("127.0.0.1", 9051)),
    ("gateway:1", ("gateway", 1)),
    ("[::1]:65535", ("::1", 65535)),
])
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(format_host_port(*expected)) == expected


@pytest.mark.parametrize("text", ["", "host", ":80", "host:", "host:0", "host:65536",
                                  "::1:80", "[::1]80", "[zz]:80", "host:8o"])
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)
