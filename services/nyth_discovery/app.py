"""The discovery index: servers advertise to it, it measures them over Tor (probes and
retention audits) and publishes what it measured as a signed directory, over HTTP and
into a public group on its directory servers (docs/discovery.md, "The index service").

Background tasks: the prober (prober.py), the auditor (audits.py), the directory issuer
and publisher (publisher.py), and the onion publisher. Nothing a listed server says is
taken on trust; everything it serves is bounded and verified.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from nyth.proto.discovery import IndexBundle
from nyth.runtime.onion_service import OnionService, answer_redis_errors, redis_client, unseal
from nyth.tor.endpoints import ControlEndpoint, SocksEndpoint
from nyth.web import install_common

from nyth_discovery.adverts import AdvertDesk
from nyth_discovery.audits import Auditor
from nyth_discovery.index_bundle import (
    directory_onions,
    group_key_path,
    load_or_create_group_key,
    wanted_bundle,
)
from nyth_discovery.models import ADVERT_B64
from nyth_discovery.prober import Prober
from nyth_discovery.publisher import Publisher
from nyth_discovery.reach import Reach
from nyth_discovery.routes import (
    advert_routes,
    bundle_routes,
    directory_routes,
    operations_routes,
    server_routes,
)
from nyth_discovery.settings import DiscoverySettings
from nyth_discovery.storage import DiscoveryStore

log = logging.getLogger("nyth_discovery")

SERVICE = "discovery"


@dataclass
class DiscoveryState(OnionService[DiscoverySettings]):
    log = log
    entries = "servers"

    index: IndexBundle
    store: DiscoveryStore
    reach: Reach
    desk: AdvertDesk
    prober: Prober
    auditor: Auditor
    directory: Publisher  # (`publisher` is the onion publisher's, in OnionService)

    def run_background(self) -> None:
        self.spawn(self.prober.run(), "prober")
        self.spawn(self.auditor.run(), "auditor")
        self.spawn(self.directory.run_issue(), "directory-issue")
        self.spawn(self.directory.run_publish(), "directory-publish")
        self.publish_onion()

    async def stop(self) -> None:
        await asyncio.gather(self.prober.stop(), self.auditor.stop(), self.directory.stop())
        await super().stop()


def _reach(settings: DiscoverySettings) -> Reach:
    socks = SocksEndpoint.from_string(settings.tor_socks) if settings.tor_socks else None
    control = None
    if settings.tor_control:
        password = (settings.tor_control_password.get_secret_value()
                    if settings.tor_control_password is not None else None)
        control = ControlEndpoint.from_string(settings.tor_control, password)
    return Reach(socks, control)


async def start_state(settings: DiscoverySettings) -> DiscoveryState:
    group_key = await asyncio.to_thread(load_or_create_group_key, group_key_path(settings))
    servers = await directory_onions(settings)
    identity, bundle = await unseal(
        settings, lambda s, i: wanted_bundle(s, i, group_key, servers), log)
    index = IndexBundle.verify(bundle, identity.onion)
    redis = redis_client(settings)
    store = DiscoveryStore(redis, key_prefix=settings.stream_key,
                           max_entries=settings.max_entries, probe_window=settings.probe_window)
    reach = _reach(settings)
    desk = AdvertDesk(store, reach, identity.public_key, settings.advert_pow_bits,
                      settings.advert_min_gap_seconds, settings.max_entries)
    publisher = Publisher(store, identity, index, reach, settings.directory_interval_seconds,
                          settings.directory_lifetime_seconds, settings.publish_interval_seconds,
                          settings.max_entries)
    return DiscoveryState(settings, identity, bundle, redis, index, store, reach, desk,
                          Prober(store, reach, settings.probe_interval_seconds),
                          Auditor(store, reach, settings.audit_interval_seconds), publisher)


def create_app(settings: DiscoverySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await start_state(settings)
        app.state.nyth = state
        state.run_background()
        if not state.reach.available:
            log.warning("no NYTH_TOR_SOCKS: this index cannot reach, measure or publish to "
                        "any server")
        log.info("discovery index %s.onion listening on %s:%d (adverts need %d-bit work; "
                 "directory group on %s)", state.identity.onion, settings.listen_host,
                 settings.listen_port, settings.advert_pow_bits,
                 ", ".join(o[:8] + "…" for o in state.index.directory_onions))
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Nyth discovery index",
        version="1",
        description=(
            "Servers (group servers, mailboxes) advertise here with a signed advert; the "
            "index measures them over Tor (probes, retention audits) and publishes what it "
            "measured as a directory signed by its onion key, here and in a public group "
            "on its directory servers. Nothing a server claims about itself ranks it."
        ),
        lifespan=lifespan,
    )
    app.include_router(bundle_routes())
    app.include_router(advert_routes())
    app.include_router(directory_routes())
    app.include_router(server_routes())
    app.include_router(operations_routes())
    answer_redis_errors(app, log)
    # The only body is an advert's JSON; the slack lets a malformed one be told what is
    # wrong with it (422) instead of only that it is too long.
    install_common(app, SERVICE, max_body_bytes=ADVERT_B64 + 8192)
    return app
