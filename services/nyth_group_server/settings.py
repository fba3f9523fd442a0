"""Group server configuration, from ``NYTH_*`` environment variables.

NYTH_KEY_PASSPHRASE (or NYTH_KEY_PASSPHRASE_FILE) is required: the server's onion key is
sealed at rest with it. It is held as a SecretStr and never logged or echoed.

NYTH_TOKENS_REQUIRED makes the server want one Privacy Pass token per post, issued for
NYTH_TOKEN_POW_BITS of proof of work (docs/protocol.md §9, `nyth_group_server.tokens`);
the token key is sealed at rest with the same passphrase as the onion key.

The ``NYTH_FAULT_*`` settings make the server misbehave on purpose (see
`nyth_group_server.faults`); they are accepted only with NYTH_DEV_MODE=true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from nyth.config import (
    MAX_U63,
    AdvertiserSettings,
    DevModeSettings,
    OnionServiceSettings,
    TestReaderLabel,
)
from nyth.proto.bundle import MAX_BLOB_SIZE
from nyth.proto.tokens import MAX_POW_BITS
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

# Bundle limits: the signed key bundle carries these values, so they must fit in it.
MIN_BLOB_SIZE = 64
MAX_WITHHOLD_LABELS = 32
MAX_FAULT_DELAY_MS = 60_000


class GroupServerSettings(OnionServiceSettings, AdvertiserSettings, DevModeSettings):
    key_file: ClassVar[str] = "group_server.key"
    bundle_file: ClassVar[str] = "bundle.bin"
    dev_only_fields: ClassVar[tuple[str, ...]] = (
        "fault_seed", "fault_drop_fraction", "fault_withhold_from", "fault_withhold_fraction",
        "fault_forget_after_seconds", "fault_delay_ms", "fault_reorder",
        "fault_token_wrong_key",
    )
    token_key_file: ClassVar[str] = "token.key"  # noqa: S105 (a file name)

    listen_port: int = Field(8080, ge=1, le=65535)
    stream_key: str = Field(
        "nyth:group", min_length=1, max_length=200,
        description="Key prefix in Redis, so several servers can share one Redis.",
    )
    blob_size: int = Field(2048, ge=MIN_BLOB_SIZE, le=MAX_BLOB_SIZE)
    max_blobs: int = Field(100_000, ge=1, le=MAX_U63)
    max_age_seconds: int = Field(30 * 24 * 3600, ge=1, le=MAX_U63 // 1000)

    # -- tokens (docs/protocol.md §9) ------------------------------------------------------
    tokens_required: bool = Field(
        False, description="One Privacy Pass token per post; the token key goes in the bundle.")
    token_pow_bits: int = Field(
        20, ge=0, le=MAX_POW_BITS,
        description="Proof of work one issue request (a batch of 32 tokens) costs, in leading "
                    "zero bits; signed into the bundle (v2) when tokens are required.")
    token_replay_seconds: int = Field(
        86_400, ge=60, le=365 * 86_400,
        description="How long an answered issue request is remembered, to refuse it again.")

    # -- fault injection (dev mode only) ---------------------------------------------------
    fault_seed: int = Field(
        0, ge=0, le=MAX_U63,
        description="Keys every fault decision (with the server's onion), so runs repeat.")
    fault_drop_fraction: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Fraction of posts answered 201 but never stored.")
    fault_withhold_from: Annotated[tuple[TestReaderLabel, ...], NoDecode] = Field(
        (), max_length=MAX_WITHHOLD_LABELS,
        description="Comma-separated reader labels (Nyth-Test-Reader) to withhold blobs from.")
    fault_withhold_fraction: float = Field(
        1.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Fraction of blobs withheld from those readers, fixed per blob id.")
    fault_forget_after_seconds: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Delete blobs this long after they were stored, whatever the bundle's "
                    "max age promises.")
    fault_delay_ms: int = Field(
        0, ge=0, le=MAX_FAULT_DELAY_MS, description="Added latency on posts and reads.")
    fault_reorder: bool = Field(False, description="Shuffle the blobs of each answer.")
    fault_token_wrong_key: bool = Field(
        False, description="Issue tokens under a key other than the bundle's (the proof then "
                           "fails at every honest client).")

    @field_validator("fault_withhold_from", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            labels = [part.strip() for part in value.split(",") if part.strip()]
            return tuple(dict.fromkeys(labels))  # duplicates dropped, order kept
        return value

    @model_validator(mode="after")
    def _faults_make_sense(self) -> GroupServerSettings:
        if "fault_withhold_fraction" in self.model_fields_set and not self.fault_withhold_from:
            raise ValueError("NYTH_FAULT_WITHHOLD_FRACTION needs NYTH_FAULT_WITHHOLD_FROM "
                             "(the reader labels to withhold from)")
        if self.fault_token_wrong_key and not self.tokens_required:
            raise ValueError("NYTH_FAULT_TOKEN_WRONG_KEY needs NYTH_TOKENS_REQUIRED=true")
        forget = self.fault_forget_after_seconds
        if forget is not None and forget >= self.max_age_seconds:
            raise ValueError(
                f"NYTH_FAULT_FORGET_AFTER_SECONDS ({forget:g}) must be below "
                f"NYTH_MAX_AGE_SECONDS ({self.max_age_seconds}): retention drops blobs by then"
            )
        return self

    @property
    def token_key_path(self) -> Path:
        return self.data_dir / self.token_key_file
