"""`python -m nyth_peer`: run one profile's peer engine (API + P2P + groups)."""

from __future__ import annotations

import asyncio
import logging
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


def _api_token(settings: PeerSettings) -> str:
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    path = settings.data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    keystore.write_private_file(path, token.encode())
    return token


async def _main(settings: PeerSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = Engine(settings)
    app = create_app(engine, _api_token(settings))
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


def main() -> None:
    try:
        settings = load_settings(PeerSettings)
    except ConfigError as exc:
        print(f"nyth-peer: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_main(settings))
    except AuthenticationError:
        print("nyth-peer: wrong passphrase for the profile", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
