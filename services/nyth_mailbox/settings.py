"""Mailbox configuration, from ``NYTH_*`` environment variables.

NYTH_KEY_PASSPHRASE (or NYTH_KEY_PASSPHRASE_FILE) is required: the mailbox's onion key is
sealed at rest with it. It is held as a SecretStr and never logged or echoed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from nyth.config import HostPort, NythSettings, format_host_port
from nyth.proto.mailbox_bundle import MAX_POW_BITS, MAX_RECORD_SIZE, MIN_RECORD_SIZE
from pydantic import Field, SecretStr, field_validator, model_validator

MAX_U63 = (1 << 63) - 1


class MailboxSettings(NythSettings):
    secret_fields: ClassVar[tuple[str, ...]] = ("key_passphrase", "tor_control_password")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding records and cards (AOF on)."
    )
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(8081, ge=1, le=65535)
    data_dir: Path = Field(description="Where the sealed onion key and the signed bundle live.")
    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None

    tor_control: HostPort | None = Field(
        None, description="tor gateway control port; when unset, no onion is published."
    )
    tor_control_password: SecretStr | None = None
    tor_control_password_file: Path | None = None
    onion_target: HostPort | None = Field(
        None, description="host:port tor connects to for this service (default: listen address)."
    )
    onion_port: int = Field(80, ge=1, le=65535, description="Virtual port of the onion service.")

    record_size: int = Field(
        1024, ge=MIN_RECORD_SIZE, le=MAX_RECORD_SIZE,
        description="Every record's ciphertext is exactly this many bytes.",
    )
    max_records: int = Field(100_000, ge=1, le=MAX_U63)
    max_age_seconds: int = Field(14 * 24 * 3600, ge=1, le=MAX_U63 // 1000)
    pow_bits: int = Field(
        20, ge=0, le=MAX_POW_BITS, description="Leading zero bits a post's proof of work needs."
    )
    max_page: int = Field(1000, ge=1, le=100_000)
    max_detect_scan: int = Field(
        5000, ge=1, le=1_000_000,
        description="Records tested per POST /v1/detect call (bounds the work of one request).",
    )
    max_cards: int = Field(100_000, ge=1, le=MAX_U63, description="Contact cards kept at most.")
    max_card_lifetime_seconds: int = Field(
        90 * 24 * 3600, ge=60, le=MAX_U63 // 1000,
        description="Cards valid for longer than this (from now) are refused.",
    )
    stream_key: str = Field(
        "nyth:mailbox", min_length=1, max_length=200,
        description="Key prefix in Redis, so several services can share one Redis.",
    )
    max_streams: int = Field(256, ge=1, description="Concurrent detection streams per process.")
    keepalive_seconds: float = Field(15.0, gt=0, le=3600)
    trim_interval_seconds: float = Field(
        30.0, gt=0, le=86_400, description="How often old records are trimmed by age."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(
        False, description="Per-request logs are metadata; off unless asked for."
    )

    @field_validator("stream_key")
    @classmethod
    def _printable_key(cls, value: str) -> str:
        if not value.isprintable() or any(ch.isspace() for ch in value):
            raise ValueError("must be printable without spaces")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _require_passphrase(self) -> MailboxSettings:
        if self.key_passphrase is None or not self.key_passphrase.get_secret_value():
            raise ValueError(
                "NYTH_KEY_PASSPHRASE or NYTH_KEY_PASSPHRASE_FILE is required "
                "(it seals the mailbox's onion key at rest)"
            )
        return self

    @property
    def effective_onion_target(self) -> str:
        if self.onion_target:
            return self.onion_target
        host = self.listen_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return format_host_port(host, self.listen_port)

    @property
    def key_path(self) -> Path:
        return self.data_dir / "mailbox.key"

    @property
    def bundle_path(self) -> Path:
        return self.data_dir / "mailbox_bundle.bin"

    def passphrase(self) -> str:
        assert self.key_passphrase is not None
        return self.key_passphrase.get_secret_value()
