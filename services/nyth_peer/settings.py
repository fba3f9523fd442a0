"""Peer engine configuration, from ``NYTH_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nyth.config import (
    DevModeSettings,
    HostNames,
    HostPort,
    OnionList,
    TestReaderLabel,
    UrlList,
)
from pydantic import Field, SecretStr


class PeerSettings(DevModeSettings):
    secret_fields: ClassVar[tuple[str, ...]] = ("passphrase", "api_token", "tor_control_password")
    dev_only_fields: ClassVar[tuple[str, ...]] = ("test_reader_label",)

    data_dir: Path = Field(description="Profile directory (sealed key file and database).")
    passphrase: SecretStr | None = Field(
        None, description="Unlock (or, with NYTH_PROFILE_NAME, create) the profile at start.")
    passphrase_file: Path | None = None
    profile_name: str | None = Field(None, max_length=64,
                                     description="Create a profile with this name if none exists.")
    api_host: str = Field("127.0.0.1", description="Local API; keep it on loopback/internal.")
    api_port: int = Field(8700, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        None, description="Bearer token for the API; default: generated into <data dir>/api-token.")
    api_token_file: Path | None = None
    ui_hosts: HostNames = Field(
        default_factory=list,
        description="Host names the web UI answers to besides localhost, 127.0.0.1, ::1 and "
                    "NYTH_API_HOST (comma-separated): any other Host header is refused, "
                    "against DNS rebinding. Add the name you browse to, if another.")
    p2p_host: str = "127.0.0.1"
    p2p_port: int = Field(0, ge=0, le=65535, description="Listener tor forwards the onion to.")
    p2p_stranger_idle_seconds: float = Field(
        60.0, gt=0, le=86_400,
        description="Close a P2P session from someone who is not a contact after this long "
                    "without a message (their request is in by then).")
    onion_target: HostPort | None = Field(
        None, description="host:port tor connects to for our onion (default: p2p listener).")
    tor_socks: HostPort = Field(description="tor gateway SOCKS port (host:port).")
    tor_control: HostPort = Field(description="tor gateway control port (host:port).")
    tor_control_password: SecretStr | None = None
    tor_control_password_file: Path | None = None
    mailbox: str | None = Field(
        None, min_length=56, max_length=62,
        description="Onion of the mailbox this profile uses for offline first contact.")
    mailbox_healthz: str | None = Field(
        None, pattern=r"^https?://", max_length=300,
        description="Instead of NYTH_MAILBOX: the /healthz URL of a mailbox deployed beside "
                    "this peer (same compose project); its onion is read from there at start.")
    mailbox_after_seconds: float = Field(
        60.0, ge=0, le=86_400,
        description="How long a contact must be unreachable P2P before we use its mailbox.")
    mailbox_poll_seconds: float = Field(15.0, gt=0, le=86_400)
    mailbox_post_delay_seconds: float = Field(
        30.0, ge=0, le=3600,
        description="Mean random delay before a record is posted to a contact's mailbox "
                    "(exponential, at most 4 times this), so its time tells little.")
    mailbox_card_gap_seconds: float = Field(
        120.0, ge=0, le=86_400,
        description="A record is never posted sooner than this after fetching the "
                    "recipient's card, so the two are harder to pair by time.")
    detection_bits: int | None = Field(
        None, ge=0, le=24,
        description="Delegate an FMD detection key with false-positive rate 2^-n to our "
                    "mailbox; unset: download everything and test locally (it learns nothing).")
    retry_initial_seconds: float = Field(2.0, gt=0, le=3600)
    retry_cap_seconds: float = Field(300.0, gt=0, le=86_400)
    recovery_grace_seconds: float = Field(
        15.0, ge=0.1, le=3600,
        description="How long a gap in a group's history waits for the servers' ordinary "
                    "streams before recovery starts (re-fetch, other servers, members).")
    recovery_heads_seconds: float = Field(
        60.0, ge=1, le=3600,
        description="Tell each online member of a group our newest messages (GROUP_HEADS) "
                    "at most this often, and at least this often while it stays online.")
    discovery_indexes: OnionList = Field(
        default_factory=list,
        description="Discovery indexes to read the directory of measured servers from "
                    "(onions, comma-separated); each is pinned on first use.")
    discovery_healthz: UrlList = Field(
        default_factory=list,
        description="Instead of (or beside) NYTH_DISCOVERY_INDEXES: /healthz URLs of indexes "
                    "deployed beside this peer; their onions are read from there at start.")
    discovery_refresh_seconds: float = Field(
        300.0, ge=1, le=86_400, description="How often each index's directory is read again.")
    log_level: str = "info"

    # Test hook (NYTH_DEV_MODE only): name ourselves to group servers in the
    # Nyth-Test-Reader header, so a fault-injecting server can withhold blobs from us.
    test_reader_label: TestReaderLabel | None = Field(
        None, description="Dev mode only: our label in the Nyth-Test-Reader header sent to "
                          "group servers (a test hook for fault-injecting servers).")
