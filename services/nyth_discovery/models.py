"""The index's HTTP request and response models (its OpenAPI document)."""

from __future__ import annotations

from nyth.http_limits import b64_len
from nyth.proto import discovery
from nyth.proto.discovery import ADVERT_SIZE
from nyth.runtime.onion_service import Health
from pydantic import BaseModel, Field

B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
ADVERT_B64 = b64_len(ADVERT_SIZE)


class BundleResponse(BaseModel):
    bundle: str = Field(description="Base64 of the signed IndexBundle (pin these bytes).")
    onion: str = Field(description="The index's onion service id (no .onion).")
    advert_pow_bits: int = Field(description="Leading zero bits an advert's proof of work needs.")
    directory_servers: list[str] = Field(
        description="Onions of the group servers holding the public directory group.")
    directory_group_key: str = Field(
        description="Base64 of the directory group's key (public: anyone may read it).")


class AdvertBody(BaseModel):
    advert: str = Field(
        description=f"Base64 of a signed advert ({ADVERT_SIZE} bytes, nyth.proto.discovery).",
        min_length=ADVERT_B64, max_length=ADVERT_B64, pattern=B64_PATTERN)


class AdvertAccepted(BaseModel):
    onion: str
    kind: str = Field(description='"group-server" or "mailbox".')
    expires_at: int = Field(description="The listing ends then unless the server renews it.")
    listed: bool = Field(description="Whether the server was listed already (a renewal; its "
                                     "first_seen is kept). A new server appears in the next "
                                     "directory.")


class DirectoryPage(BaseModel):
    epoch: int
    digest: str = Field(description="Hex SHA-256 of the whole signed directory.")
    page: int
    pages: int
    chunks: list[str] = Field(
        description=f"Base64 of up to {discovery.CHUNKS_PER_PAGE} encoded Chunks, in order "
                    "(each as in the directory group): chunks page·n .. page·n + n - 1.")


class ServerView(BaseModel):
    kind: str
    onion: str
    label: str = Field(description="The operator's own label (a claim, not measured).")
    state: str = Field(description="lost, never, down or up (nyth.proto.server_choice).")
    reason: str
    rank: int = Field(description="1 for the best ranked server of all (any kind).")
    availability: float
    probes: int
    probes_ok: int
    consecutive_failures: int
    last_probe_at: int | None
    last_ok_at: int | None
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    audit: str = Field(description='"not audited", "kept" or "lost".')
    audits_passed: int
    audit_at: int | None
    audit_canaries_open: int = Field(description="Canaries posted and not yet decided.")
    audit_inconclusive: int = Field(description="Checks that could not be made (unreachable).")
    lost_age_seconds: int | None = Field(
        description="For a loss: the canary's age at most when it was found missing.")
    limits: dict[str, int] = Field(description="What the server's signed bundle promises.")
    first_seen: int
    advert_expires: int
    last_error: str | None


class ServersPage(BaseModel):
    servers: list[ServerView]
    total: int = Field(description="Listed servers of the asked kind.")
    offset: int
    limit: int


class PublishView(BaseModel):
    onion: str
    state: str = Field(description="pending, publishing, published or failed.")
    epoch: int | None
    published_at: int | None
    chunks: int
    reason: str | None


class DiscoveryHealth(Health):
    directory_epoch: int | None = Field(None, description="Epoch of the latest directory.")
    entries: int = Field(0, description="Servers listed now.")
    tor_socks: bool = Field(False, description="Whether the index can reach servers over Tor.")
    publish: list[PublishView] = Field(
        default_factory=list, description="The directory group's servers: what was posted.")
