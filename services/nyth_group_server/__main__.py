"""``python -m nyth_group_server``: the group server, run as `nyth.runtime.redis_service.serve` says."""

import sys

from nyth.runtime.redis_service import serve

from nyth_group_server.app import create_app
from nyth_group_server.settings import GroupServerSettings

if __name__ == "__main__":
    sys.exit(serve("nyth-group-server", GroupServerSettings, create_app))
