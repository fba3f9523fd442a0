"""`python -m nyth_peer`: run one profile's peer engine (API + P2P + groups)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys

import uvicorn
from nyth import keystore
from nyth.config import ConfigError, load_settings
from nyth.errors import AuthenticationError

from nyth_peer.api import create_app
from nyth_peer.engine import Engine
from nyth_peer.profile import Profile
from nyth_peer.settings import PeerSettings

log = logging.getLogger("nyth_peer")

# Whoever holds the token reads and sends as this profile; an empty or short one is a
# misconfiguration (an empty token made "Authorization: Bearer" pass).
MIN_API_TOKEN_CHARS = 16


def _check_token(token: str, where: str) -> str:
    if len(token.strip()) < MIN_API_TOKEN_CHARS:
        raise ConfigError(f"{where}: the API token must be at least {MIN_API_TOKEN_CHARS} "
                          "characters (generate one with: openssl rand -base64 32)")
    if token != token.strip():
        raise ConfigError(f"{where}: the API token must not start or end with whitespace")
    return token


def _api_token(settings: PeerSettings) -> str:
    if settings.api_token is not None:
        where = "NYTH_API_TOKEN_FILE" if settings.api_token_file else "NYTH_API_TOKEN"
        return _check_token(settings.api_token.get_secret_value(), where)
    path = settings.data_dir / "api-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return _check_token(token, str(path))
        log.warning("%s was empty: generated a new API token", path)
    token = secrets.token_urlsafe(32)
    keystore.write_private_file(path, token.encode())
    return token


def prepare(settings: PeerSettings) -> str:
    """Private files and directory, and the API token; raises ConfigError."""
    # Everything the peer writes is private: SQLite's -wal/-shm files, keys, tokens.
    os.umask(0o077)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkdir leaves an existing directory's mode alone (a volume, an older version).
        settings.data_dir.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"NYTH_DATA_DIR {str(settings.data_dir)!r}: cannot make it a private "
                          f"directory ({exc.strerror})") from None
    return _api_token(settings)


async def _main(settings: PeerSettings, api_token: str) -> None:
    engine = Engine(settings)
    app = create_app(engine, api_token, ui_hosts=[settings.api_host, *settings.ui_hosts])
    if settings.passphrase is not None:
        passphrase = settings.passphrase.get_secret_value()
        if Profile.exists(settings.data_dir):
            profile = await asyncio.to_thread(Profile.unlock, settings.data_dir, passphrase)
        elif settings.profile_name:
            profile = await asyncio.to_thread(Profile.create, settings.data_dir,
                                              settings.profile_name, passphrase)
        else:
            profile = None
        if profile is not None:
            await engine.activate(profile)
    config = uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                            log_level=settings.log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        await engine.close()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: which contacts' cards we fetched and when,
    # which servers we poll. That is metadata the peer must not write to its log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    try:
        settings = load_settings(PeerSettings)
    except ConfigError as exc:
        print(f"nyth-peer: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    if settings.dev_mode:
        log.warning(
            "DEV MODE: test hooks on%s", f"; we name ourselves {settings.test_reader_label!r} "
            "to group servers (NYTH_TEST_READER_LABEL)" if settings.test_reader_label else "")
    try:
        api_token = prepare(settings)
    except ConfigError as exc:
        print(f"nyth-peer: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(_main(settings, api_token))
    except AuthenticationError:
        print("nyth-peer: wrong passphrase for the profile", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
