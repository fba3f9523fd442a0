"""12-factor settings shared by every Nyth service.

Every service reads its configuration from environment variables prefixed ``NYTH_``.
Secrets may instead come from a file named by ``NYTH_<NAME>_FILE`` (the Docker / compose
secrets convention), so a passphrase never has to sit in the process environment,
where ``docker inspect`` and ``/proc/<pid>/environ`` would show it.

Pydantic puts the raw input into its error messages; for secrets that would leak the
passphrase into logs, so services must report configuration errors through
`format_settings_error` / `load_settings`, which leave input values out.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nyth.proto.discovery import MAX_ADVERT_LIFETIME, encode_label
from nyth.proto.identity import normalize_onion

ENV_PREFIX = "NYTH_"
# A secret file larger than this is certainly a misconfiguration (a key file, a log...),
# and reading it whole into memory for nothing is not worth it.
MAX_SECRET_FILE_BYTES = 64 * 1024

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(ValueError):
    """The service configuration is invalid; the message is safe to log."""


def _read_secret_file(path: Path, env_name: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {env_name}_FILE {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(
            f"{env_name}_FILE {str(path)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{env_name}_FILE {str(path)!r} is not UTF-8 text") from None
    # Editors and `echo` add a final newline that is never part of the secret.
    return text.removesuffix("\n").removesuffix("\r")


def read_secret(
    name: str, environ: Mapping[str, str] | None = None, *, required: bool = False
) -> str | None:
    """The secret ``NYTH_<NAME>``, or the contents of the file named by ``NYTH_<NAME>_FILE``.

    Setting both is an error (which one wins would be a silent surprise).
    """
    env = os.environ if environ is None else environ
    key = ENV_PREFIX + name.upper()
    direct = env.get(key)
    file_name = env.get(key + "_FILE")
    if direct is not None and file_name is not None:
        raise ConfigError(f"set only one of {key} and {key}_FILE")
    if file_name is not None:
        try:
            return _read_secret_file(Path(file_name), key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if direct is None and required:
        raise ConfigError(f"{key} or {key}_FILE is required")
    return direct


def parse_host_port(text: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; raises ValueError with a readable message."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected host:port")
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ipv6]:port, got {text!r}")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"expected host:port, got {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port_text!r}")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _normalize_host_port(text: str) -> str:
    return format_host_port(*parse_host_port(text))


HostPort = Annotated[str, AfterValidator(_normalize_host_port)]
"""A "host:port" string, validated and normalized."""

MAX_LIST_ITEMS = 16


def _split_list(value: Any) -> Any:
    """A comma-separated environment value as a list (blank items dropped)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _onions(values: list[str]) -> list[str]:
    onions = [normalize_onion(v) for v in values]
    if len(set(onions)) != len(onions):
        raise ValueError("an onion is named twice")
    return onions


def _urls(values: list[str]) -> list[str]:
    for value in values:
        if not value.startswith(("http://", "https://")) or len(value) > 300:
            raise ValueError(f"expected an http(s) URL of at most 300 characters, got {value!r}")
    return values


_DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _host_names(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
        except ValueError:
            if len(value) > 253 or not _DNS_NAME.match(value):
                raise ValueError("expected a host name or IP address (no port), got "
                                 f"{value[:80]!r}") from None
    return values


OnionList = Annotated[list[str], NoDecode, BeforeValidator(_split_list),
                      Field(max_length=MAX_LIST_ITEMS), AfterValidator(_onions)]
"""Onion addresses, comma-separated in the environment (".onion" optional)."""
UrlList = Annotated[list[str], NoDecode, BeforeValidator(_split_list),
                    Field(max_length=MAX_LIST_ITEMS), AfterValidator(_urls)]
"""http(s) URLs, comma-separated in the environment."""
HostNames = Annotated[list[str], NoDecode, BeforeValidator(_split_list),
                      Field(max_length=MAX_LIST_ITEMS), AfterValidator(_host_names)]
"""Host names or IP addresses (no port), comma-separated in the environment."""


def _distinct_host_ports(values: list[str]) -> list[str]:
    normalized = [_normalize_host_port(v) for v in values]
    if len(set(normalized)) != len(normalized):
        raise ValueError("an address is named twice")
    return normalized


HostPortList = Annotated[list[str], NoDecode, BeforeValidator(_split_list),
                         Field(max_length=MAX_LIST_ITEMS), AfterValidator(_distinct_host_ports)]
"""Distinct "host:port" addresses, comma-separated in the environment."""


class NythSettings(BaseSettings):
    """Base for service settings: ``NYTH_`` prefix, unknown variables ignored.

    Subclasses list in ``secret_fields`` the SecretStr fields that may also be given as a
    file: field ``key_passphrase`` is then filled from the file in ``key_passphrase_file``
    (env ``NYTH_KEY_PASSPHRASE_FILE``), which the subclass declares as ``Path | None``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False, validate_default=True
    )

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _resolve_secret_files(self) -> NythSettings:
        for name in self.secret_fields:
            file_path: Path | None = getattr(self, f"{name}_file")
            env_name = ENV_PREFIX + name.upper()
            if file_path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"set only one of {env_name} and {env_name}_FILE")
            object.__setattr__(self, name, SecretStr(_read_secret_file(file_path, env_name)))
        return self


# -- dev mode: test hooks a real deployment must never run with ----------------------------

# What a dev-mode peer sends group servers to name itself, and what a dev-mode group
# server reads to decide whom to withhold blobs from (NYTH_FAULT_WITHHOLD_FROM). A test
# hook only: over Tor a server cannot tell readers apart, and a real client never says.
TEST_READER_HEADER = "Nyth-Test-Reader"
TEST_READER_LABEL_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
TestReaderLabel = Annotated[str, Field(pattern=TEST_READER_LABEL_PATTERN)]


class DevModeSettings(NythSettings):
    """Settings with test hooks (fault injection, reader labels) that only a dev/test
    deployment may use.

    Each field named in ``dev_only_fields`` is refused unless ``NYTH_DEV_MODE=true``:
    setting one at all, even to a harmless value, is an error, so a hook cannot be left
    in a production configuration by mistake.
    """

    dev_only_fields: ClassVar[tuple[str, ...]] = ()

    dev_mode: bool = Field(
        False, description="Dev/test mode: allows the test hooks (never set it in production)."
    )

    @model_validator(mode="after")
    def _dev_only_settings(self) -> DevModeSettings:
        if not self.dev_mode:
            used = [ENV_PREFIX + name.upper() for name in self.dev_only_fields
                    if name in self.model_fields_set]
            if used:
                raise ValueError(
                    f"{', '.join(used)} {'is a test hook' if len(used) == 1 else 'are test hooks'}"
                    f" accepted only with {ENV_PREFIX}DEV_MODE=true; refusing to start"
                )
        return self


def format_settings_error(exc: ValidationError) -> str:
    """One line per problem, naming the env variable, never echoing the input value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = "_".join(str(part) for part in error["loc"]).upper()
        where = f"{ENV_PREFIX}{loc}: " if loc else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}{message}")
    return "; ".join(lines)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build settings from the environment, turning validation errors into ConfigError."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {format_settings_error(exc)}") from None


MAX_U63 = (1 << 63) - 1


class OnionServiceSettings(NythSettings):
    """What every Redis-backed onion service (group server, mailbox) is configured with.

    Subclasses set ``key_file``/``bundle_file`` (names in the data dir) and may redeclare
    ``listen_port`` and ``stream_key`` with their own defaults.
    """

    secret_fields: ClassVar[tuple[str, ...]] = (
        "key_passphrase", "tor_control_password", "redis_password", "redis_sentinel_password")
    key_file: ClassVar[str] = "service.key"
    bundle_file: ClassVar[str] = "bundle.bin"

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding the service's stream (AOF on)."
    )
    # -- Redis through Sentinel (instead of NYTH_REDIS_URL) ---------------------------------
    redis_sentinels: HostPortList = Field(
        default_factory=list,
        description="Sentinels (host:port, comma-separated) that name the current Redis "
                    "primary; the service follows it after a failover. Excludes NYTH_REDIS_URL.")
    redis_sentinel_service: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The master name the sentinels monitor (required with NYTH_REDIS_SENTINELS).")
    redis_db: int = Field(0, ge=0, le=1023,
                          description="Database number on the primary, with NYTH_REDIS_SENTINELS.")
    redis_password: SecretStr | None = Field(
        None, description="Password of the Redis primary and replica (AUTH), if they want one.")
    redis_password_file: Path | None = None
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the sentinels themselves, if they want one.")
    redis_sentinel_password_file: Path | None = None
    # -- acknowledged = on a replica too ----------------------------------------------------
    redis_wait_replicas: int = Field(
        0, ge=0, le=MAX_LIST_ITEMS,
        description="Replicas that must hold a post before it is acknowledged (Redis WAIT); "
                    "0 acknowledges once the primary has it.")
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, le=10_000,
        description="How long a post waits for those replicas before it is answered 503.")
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(8080, ge=1, le=65535)
    data_dir: Path = Field(description="Where the sealed onion key and the signed bundle live.")
    key_passphrase: SecretStr | None = None
    key_passphrase_file: Path | None = None

    tor_control: HostPort | None = Field(
        None, description="tor gateway control port; when unset, no onion is published."
    )
    tor_socks: HostPort | None = Field(
        None, description="tor gateway SOCKS port, for a service that reaches other onions "
                          "(the discovery index probing servers, servers advertising to it)."
    )
    tor_control_password: SecretStr | None = None
    tor_control_password_file: Path | None = None
    onion_target: HostPort | None = Field(
        None, description="host:port tor connects to for this service (default: listen address)."
    )
    onion_port: int = Field(80, ge=1, le=65535, description="Virtual port of the onion service.")
    onionbalance_instance: int | None = Field(
        None, ge=1, le=10,
        description="Serve as instance N (Swarm: {{.Task.Slot}}) behind an Onionbalance front "
                    "holding this service's key: runs a tor of its own instead of publishing "
                    "through the gateway (excludes NYTH_TOR_CONTROL).")
    tor_client_torrc_file: Path | None = Field(
        None, description="A private Tor network's client options, for the tor an "
                          "Onionbalance instance runs; unset on the real Tor network.")

    max_page: int = Field(1000, ge=1, le=100_000)
    stream_key: str = Field(
        "nyth:service", min_length=1, max_length=200,
        description="Key prefix in Redis, so several services can share one Redis.",
    )
    max_streams: int = Field(256, ge=1, description="Concurrent SSE streams per process.")
    max_connections: int = Field(
        1024, ge=16, le=65_536,
        description="Open HTTP connections per process (SSE streams included); beyond it new "
                    "requests get 503 at once instead of queueing without bound.",
    )
    keepalive_seconds: float = Field(15.0, gt=0, le=3600)
    trim_interval_seconds: float = Field(
        30.0, gt=0, le=86_400, description="How often old entries are trimmed by age."
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
    def _one_way_to_redis(self) -> OnionServiceSettings:
        if self.redis_sentinels:
            if "redis_url" in self.model_fields_set:
                raise ValueError("set only one of NYTH_REDIS_URL and NYTH_REDIS_SENTINELS")
            if self.redis_sentinel_service is None:
                raise ValueError("NYTH_REDIS_SENTINELS needs NYTH_REDIS_SENTINEL_SERVICE (the "
                                 "master name the sentinels monitor)")
        else:
            for name in ("redis_sentinel_service", "redis_db", "redis_sentinel_password",
                         "redis_sentinel_password_file"):
                if name in self.model_fields_set:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()} needs NYTH_REDIS_SENTINELS")
        return self

    @model_validator(mode="after")
    def _one_way_to_publish(self) -> OnionServiceSettings:
        if self.onionbalance_instance is not None and self.tor_control is not None:
            raise ValueError("set only one of NYTH_TOR_CONTROL (publish through the gateway) "
                             "and NYTH_ONIONBALANCE_INSTANCE (behind an Onionbalance front)")
        if self.tor_client_torrc_file is not None and self.onionbalance_instance is None:
            raise ValueError("NYTH_TOR_CLIENT_TORRC_FILE needs NYTH_ONIONBALANCE_INSTANCE")
        return self

    @model_validator(mode="after")
    def _require_passphrase(self) -> OnionServiceSettings:
        # Runs after the base class filled secrets from their *_FILE variables.
        if self.key_passphrase is None or not self.key_passphrase.get_secret_value():
            raise ValueError(
                "NYTH_KEY_PASSPHRASE or NYTH_KEY_PASSPHRASE_FILE is required "
                "(it seals the service's onion key at rest)"
            )
        return self

    @property
    def effective_onion_target(self) -> str:
        if self.onion_target:
            return self.onion_target
        host = self.listen_host
        # Tor cannot connect to a wildcard; loopback is the useful guess for it.
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return format_host_port(host, self.listen_port)

    @property
    def key_path(self) -> Path:
        return self.data_dir / self.key_file

    @property
    def bundle_path(self) -> Path:
        return self.data_dir / self.bundle_file

    def passphrase(self) -> str:
        assert self.key_passphrase is not None
        return self.key_passphrase.get_secret_value()


class AdvertiserSettings(NythSettings):
    """A server that asks discovery indexes to list it (nyth.advertiser): the group server
    and the mailbox mix this in beside OnionServiceSettings."""

    discovery_indexes: OnionList = Field(
        default_factory=list,
        description="Onions of the discovery indexes to advertise this server to.")
    discovery_healthz: UrlList = Field(
        default_factory=list,
        description="Instead of (or beside) NYTH_DISCOVERY_INDEXES: /healthz URLs of indexes "
                    "deployed beside this server; their onions are read from there at start.")
    operator_label: str = Field(
        "", description="Who runs this server, as indexes list it (a claim, shown as such; at "
                        "most 32 bytes of printable UTF-8). Spreads users' choices over operators.")
    advert_lifetime_seconds: int = Field(
        86_400, ge=10, le=MAX_ADVERT_LIFETIME,
        description="How long one advert lists the server; it is renewed at half of it.")
    advert_retry_cap_seconds: float = Field(
        300.0, ge=1, le=86_400,
        description="Longest wait between attempts to advertise to an index that failed.")

    @field_validator("operator_label")
    @classmethod
    def _label(cls, value: str) -> str:
        encode_label(value)  # DecodeError is a ValueError: pydantic reports its message
        return value

    @model_validator(mode="after")
    def _adverts_need_tor(self) -> AdvertiserSettings:
        # Adverts go to onions only; without a SOCKS port none could ever leave.
        if (self.discovery_indexes or self.discovery_healthz) and \
                getattr(self, "tor_socks", "") is None:
            raise ValueError("NYTH_DISCOVERY_INDEXES / NYTH_DISCOVERY_HEALTHZ need NYTH_TOR_SOCKS "
                             "(adverts reach indexes through tor)")
        return self
