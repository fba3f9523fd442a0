"""``python -m nyth_discovery``: the discovery index, run as `nyth.runtime.redis_service.serve`
says."""

import sys

from nyth.runtime.redis_service import serve

from nyth_discovery.app import create_app
from nyth_discovery.settings import DiscoverySettings

if __name__ == "__main__":
    sys.exit(serve("nyth-discovery", DiscoverySettings, create_app))
