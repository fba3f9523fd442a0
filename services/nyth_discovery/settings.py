"""Discovery index configuration, from ``NYTH_*`` environment variables.

NYTH_KEY_PASSPHRASE (or NYTH_KEY_PASSPHRASE_FILE) is required: the index's onion key is
sealed at rest with it. The directory group (where the signed directory is also posted)
lives on NYTH_DIRECTORY_SERVERS, or on the group servers whose /healthz URLs are given in
NYTH_DIRECTORY_SERVERS_HEALTHZ (a compose deployment: their onions are read at start).
NYTH_TOR_SOCKS is needed to measure anything: every server is reached over Tor.
"""

from __future__ import annotations

from typing import ClassVar

from nyth.config import OnionList, OnionServiceSettings, UrlList
from nyth.proto import discovery
from nyth.proto.group import MAX_SERVERS
from pydantic import Field, model_validator


class DiscoverySettings(OnionServiceSettings):
    # Must match nyth.runtime.devnet.DISCOVERY_KEY_FILE (the devnet learns the onion early).
    key_file: ClassVar[str] = "discovery.key"
    bundle_file: ClassVar[str] = "index_bundle.bin"
    group_key_file: ClassVar[str] = "directory_group.key"

    listen_port: int = Field(8082, ge=1, le=65535)
    stream_key: str = Field(
        "nyth:discovery", min_length=1, max_length=200,
        description="Key prefix in Redis, so several services can share one Redis.",
    )
    advert_pow_bits: int = Field(
        20, ge=0, le=discovery.MAX_POW_BITS,
        description="Leading zero bits an advert's proof of work needs (in the index bundle).")
    directory_servers: OnionList = Field(
        default_factory=list,
        description="Group servers holding the public directory group (comma-separated).")
    directory_servers_healthz: UrlList = Field(
        default_factory=list,
        description="/healthz URLs of group servers deployed alongside; their onions join "
                    "directory_servers at start.")
    probe_interval_seconds: float = Field(
        300.0, ge=1, le=86_400, description="Time between probes of one server (±20 % jitter).")
    probe_window: int = Field(
        20, ge=1, le=1000, description="Recent probes per server that availability and latency "
                                       "are computed over.")
    audit_interval_seconds: float = Field(
        3600.0, ge=1, le=30 * 86_400, description="How often a new canary is posted per server.")
    directory_interval_seconds: float = Field(
        60.0, ge=1, le=86_400, description="How often a new signed directory is issued.")
    directory_lifetime_seconds: int = Field(
        3600, ge=60, le=30 * 86_400, description="How long an issued directory is valid.")
    publish_interval_seconds: float = Field(
        600.0, ge=1, le=86_400,
        description="How often the directory is posted into the directory group (also at once "
                    "when the set of listed servers changes).")
    max_entries: int = Field(500, ge=1, le=discovery.MAX_ENTRIES,
                             description="Servers listed at most.")
    advert_min_gap_seconds: float = Field(
        60.0, ge=0, le=86_400,
        description="An onion submitting again sooner than this is answered 429.")

    @model_validator(mode="after")
    def _need_directory_servers(self) -> DiscoverySettings:
        if not self.directory_servers and not self.directory_servers_healthz:
            raise ValueError("NYTH_DIRECTORY_SERVERS or NYTH_DIRECTORY_SERVERS_HEALTHZ is "
                             "required (the group servers holding the directory group)")
        if len(self.directory_servers) + len(self.directory_servers_healthz) > MAX_SERVERS:
            raise ValueError(f"at most {MAX_SERVERS} directory servers")
        return self
