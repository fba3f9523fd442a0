"""``python -m nyth_group_server``: serve the group server API (and publish its onion
through the tor gateway when NYTH_TOR_CONTROL is set).

SIGTERM / SIGINT stop it cleanly: uvicorn stops accepting, open SSE streams are ended,
the onion publisher and Redis connections are closed by the app's lifespan.
"""

from __future__ import annotations

import sys

from nyth.runtime.redis_service import serve

from nyth_group_server.app import create_app
from nyth_group_server.settings import GroupServerSettings


def main() -> int:
    return serve("nyth-group-server", GroupServerSettings, create_app)


if __name__ == "__main__":
    sys.exit(main())
