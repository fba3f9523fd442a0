"""``python -m nyth_mailbox``: serve the mailbox API (and publish its onion
through the tor gateway when NYTH_TOR_CONTROL is set).

SIGTERM / SIGINT stop it cleanly: uvicorn stops accepting, open SSE streams are ended,
the onion publisher and Redis connections are closed by the app's lifespan.
"""

from __future__ import annotations

import sys

from nyth.runtime.redis_service import serve

from nyth_mailbox.app import create_app
from nyth_mailbox.settings import MailboxSettings


def main() -> int:
    return serve("nyth-mailbox", MailboxSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
