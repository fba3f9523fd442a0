"""Mailbox configuration, from ``NYTH_*`` environment variables.

NYTH_KEY_PASSPHRASE (or NYTH_KEY_PASSPHRASE_FILE) is required: the mailbox's onion key is
sealed at rest with it. It is held as a SecretStr and never logged or echoed.
"""

from __future__ import annotations

from typing import ClassVar

from nyth.config import MAX_U63, AdvertiserSettings, OnionServiceSettings
from nyth.proto.mailbox_bundle import MAX_POW_BITS, MAX_RECORD_SIZE, MIN_RECORD_SIZE
from nyth.proto.mailbox_record import RECOMMENDED_RECORD_SIZE
from pydantic import Field

from nyth_mailbox.detection import MAX_WORKERS as MAX_DETECT_WORKERS


class MailboxSettings(OnionServiceSettings, AdvertiserSettings):
    key_file: ClassVar[str] = "mailbox.key"
    bundle_file: ClassVar[str] = "mailbox_bundle.bin"

    listen_port: int = Field(8081, ge=1, le=65535)
    stream_key: str = Field(
        "nyth:mailbox", min_length=1, max_length=200,
        description="Key prefix in Redis, so several services can share one Redis.",
    )
    # Smaller records cannot hold every P2P message; one that does not fit cannot go
    # through this mailbox at all.
    record_size: int = Field(
        RECOMMENDED_RECORD_SIZE, ge=MIN_RECORD_SIZE, le=MAX_RECORD_SIZE,
        description="Every record's ciphertext is exactly this many bytes.",
    )
    max_records: int = Field(100_000, ge=1, le=MAX_U63)
    max_age_seconds: int = Field(14 * 24 * 3600, ge=1, le=MAX_U63 // 1000)
    pow_bits: int = Field(
        20, ge=0, le=MAX_POW_BITS, description="Leading zero bits a post's proof of work needs."
    )
    max_detect_scan: int = Field(
        5000, ge=1, le=1_000_000,
        description="Records tested per POST /v1/detect call (bounds the work of one request).",
    )
    max_concurrent_detects: int = Field(
        4, ge=1, le=1024,
        description="POST /v1/detect calls running at once; more get 503 with Retry-After "
                    "instead of queueing CPU work without bound.",
    )
    detect_workers: int | None = Field(
        None, ge=1, le=MAX_DETECT_WORKERS,
        description="Processes that run detection tests (CPU-bound); unset: one per core "
                    "this process may use. 1 runs them in a thread of the service itself.",
    )
    max_cards: int = Field(100_000, ge=1, le=MAX_U63, description="Contact cards kept at most.")
    max_card_lifetime_seconds: int = Field(
        90 * 24 * 3600, ge=60, le=MAX_U63 // 1000,
        description="Cards valid for longer than this (from now) are refused.",
    )
