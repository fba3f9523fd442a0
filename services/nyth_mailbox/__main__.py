"""``python -m nyth_mailbox``: serve the mailbox API (and publish its onion
through the tor gateway when NYTH_TOR_CONTROL is set).

SIGTERM / SIGINT stop it cleanly: uvicorn stops accepting, open SSE streams are ended,
the onion publisher and Redis connections are closed by the app's lifespan.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from nyth.config import ConfigError, load_settings

from nyth_mailbox.app import create_app
from nyth_mailbox.settings import MailboxSettings


def main() -> int:
    try:
        settings = load_settings(MailboxSettings)
    except ConfigError as exc:
        # Only our own message: pydantic's would echo input values, secrets included.
        print(f"nyth-mailbox: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        server_header=False,
        # Behind tor every client is the tor gateway; forwarded headers mean nothing.
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
