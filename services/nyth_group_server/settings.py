"""Group server configuration, from ``NYTH_*`` environment variables.

NYTH_KEY_PASSPHRASE (or NYTH_KEY_PASSPHRASE_FILE) is required: the server's onion key is
sealed at rest with it. It is held as a SecretStr and never logged or echoed.
"""

from __future__ import annotations

from typing import ClassVar

from nyth.config import MAX_U63, OnionServiceSettings
from nyth.proto.bundle import MAX_BLOB_SIZE
from pydantic import Field

# Bundle limits: the signed key bundle carries these values, so they must fit in it.
MIN_BLOB_SIZE = 64


class GroupServerSettings(OnionServiceSettings):
    key_file: ClassVar[str] = "group_server.key"
    bundle_file: ClassVar[str] = "bundle.bin"

    listen_port: int = Field(8080, ge=1, le=65535)
    stream_key: str = Field(
        "nyth:group", min_length=1, max_length=200,
        description="Key prefix in Redis, so several servers can share one Redis.",
    )
    blob_size: int = Field(2048, ge=MIN_BLOB_SIZE, le=MAX_BLOB_SIZE)
    max_blobs: int = Field(100_000, ge=1, le=MAX_U63)
    max_age_seconds: int = Field(30 * 24 * 3600, ge=1, le=MAX_U63 // 1000)
