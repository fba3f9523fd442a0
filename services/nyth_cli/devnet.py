"""`nyth devnet up`: a whole Nyth network as local processes, stopped by Ctrl-C."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from nyth.runtime.devnet import Devnet
from rich.console import Console

devnet_app = typer.Typer(help="A whole network on this machine (private Tor network included).",
                         no_args_is_help=True, rich_markup_mode="markdown")
console = Console()


@devnet_app.command("up")
def up(
    directory: Annotated[Path, typer.Option("--dir", help="state directory (wiped first)")] = Path(".devnet"),
    peers: Annotated[str, typer.Option(help="comma-separated demo peer names")] = "alice,bob",
    relays: Annotated[int, typer.Option(min=1, max=8, help="relays besides the 3 authorities")] = 2,
) -> None:
    """Run a whole network here until Ctrl-C.

    Starts redis-server, a private Tor network, a tor gateway, a group server, a mailbox,
    a discovery index and demo peers, and prints how to reach them."""
    names = [n.strip() for n in peers.split(",") if n.strip()]
    started = time.monotonic()
    devnet = Devnet(directory.resolve())
    devnet.remove()  # a fresh network each time: old onions and consensus are useless

    def _stop(*_args: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        with console.status("starting redis-server and a private Tor network…"):
            devnet.start_infrastructure()
        with console.status("starting the group server, mailbox, discovery index and peers…"):
            # Servers advertise to the index and peers read it: its onion is known (its
            # key made) before it starts; it needs the group server's onion for its
            # directory group, so it starts last.
            index = devnet.index_onion()
            mailbox_onion = devnet.service_onion("mailbox", "mailbox.key")
            server = devnet.add_group_server(NYTH_DISCOVERY_INDEXES=index,
                                             NYTH_OPERATOR_LABEL="devnet")
            mailbox = devnet.add_mailbox(NYTH_DISCOVERY_INDEXES=index,
                                         NYTH_OPERATOR_LABEL="devnet")
            handles = [devnet.add_peer(name, NYTH_MAILBOX=mailbox_onion,
                                       NYTH_DISCOVERY_INDEXES=index,
                                       NYTH_DISCOVERY_REFRESH_SECONDS="10")
                       for name in names]
            discovery = devnet.add_discovery(directory_servers=[server.wait_online()])
            mailbox.wait_online()
            discovery.wait_online()
            for handle in handles:
                handle.wait_online()
        # Plain lines, not a table: onion addresses must survive copy-paste whole.
        for handle in handles:
            console.print(f"peer {handle.name}: {handle.onion}.onion  API {handle.api_url}  "
                          f"web UI {handle.api_url}/ui/  "
                          f"token file {directory}/secrets/{handle.name}.api-token", soft_wrap=True)
        for service in (server, mailbox, discovery):
            console.print(f"{service.name}: {service.onion}.onion  (local {service.url})",
                          soft_wrap=True)
        console.print(f"up in {time.monotonic() - started:.1f} s. Try:")
        first = handles[0]
        console.print(f"  export NYTH_API_URL={first.api_url} "
                      f"NYTH_API_TOKEN_FILE={directory}/secrets/{first.name}.api-token",
                      soft_wrap=True)
        if len(handles) > 1:
            console.print(f"  nyth contact add {handles[1].onion} --text hello", soft_wrap=True)
        console.print(f"  nyth group create friends --server {server.onion}", soft_wrap=True)
        console.print("  nyth discover   (servers as the index measured them)")
        console.print("Ctrl-C stops everything.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping…"):
            devnet.stop()
        console.print("stopped; no process left behind.")
