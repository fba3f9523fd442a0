"""Entry points for the tor containers of the compose stack.

    python -m nyth.tor.container network   # 3 authorities + 2 relays on this container's IP
    python -m nyth.tor.container gateway   # the tor client: SOCKS + control port
    python -m nyth.tor.container onionbalance  # one onion in front of a service's replicas

`network` writes the options clients need (DirAuthority lines...) to
NYTH_TOR_CLIENT_TORRC_FILE (default /shared/client-torrc) once a consensus lists every
relay with the flags onion services need; the file's presence is its healthcheck.
Every start is a fresh network (new keys, new ports): the file is replaced, and a
gateway that sees it change exits so its restart policy brings it back on the new one.

`gateway` waits for that file (when NYTH_TOR_CLIENT_TORRC_FILE is set and
NYTH_TOR_PRIVATE_NETWORK is not 0) and for an authority to serve a consensus, then runs
tor on fixed ports (NYTH_TOR_SOCKS_PORT 9050, NYTH_TOR_CONTROL_PORT 9051, bound to
NYTH_TOR_LISTEN_HOST, default 0.0.0.0: keep it on an internal network; a name, or a
network in CIDR form meaning this container's address there) with the password
from NYTH_TOR_CONTROL_PASSWORD[_FILE]. The control port there is Nyth's control filter
(nyth.tor.control_filter): tor's own control port listens only on 127.0.0.1 inside the
container (NYTH_TOR_INTERNAL_CONTROL_PORT, 9151). Onions may point only into the network
the gateway listens on (NYTH_TOR_LISTEN_HOST must then be one address, not 0.0.0.0) or
into NYTH_TOR_ONION_TARGET_NETWORKS (comma-separated CIDRs) when set; the gateway refuses
to start when it cannot tell. NYTH_TOR_CONTROL_FILTER=0 exposes tor's
control port directly instead (debugging only: every client can then do anything).
Without a private network it joins the real Tor network. It touches NYTH_TOR_READY_FILE
(default /tmp/nyth-tor-ready) once bootstrapped (its healthcheck) and exits when tor (or
the filter) does. tor's log is copied to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from nyth.config import ConfigError, read_secret
from nyth.tor.control_filter import ControlFilterProxy, ControlFilterThread, TargetPolicy
from nyth.tor.endpoints import ControlEndpoint
from nyth.tor.gateway import TorGateway
from nyth.tor.privnet import (
    DEFAULT_VOTING_INTERVAL,
    announced_lines,
    wait_for_announced_network,
)

log = logging.getLogger("nyth.tor.container")

DEFAULT_CLIENT_TORRC = "/shared/client-torrc"
DEFAULT_READY_FILE = "/tmp/nyth-tor-ready"  # noqa: S108 - container-private /tmp


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def _own_ip() -> str:
    """This container's address (the first one its hostname resolves to)."""
    return socket.gethostbyname(socket.gethostname())


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def own_address_in(network: str) -> str:
    """This container's address in `network` (a CIDR). Swarm names a task in its DNS only
    once the task is healthy, and the gateway is healthy only once it listens: there, it
    is told the tor network's subnet instead of its own name."""
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise ConfigError(f"NYTH_TOR_LISTEN_HOST: {exc}") from None
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        # Connecting a UDP socket sends nothing: the kernel only picks the source address
        # of the route into that network, which is ours on the interface attached to it.
        try:
            probe.connect((str(net.network_address + 1), 9))
        except OSError as exc:
            raise ConfigError(f"NYTH_TOR_LISTEN_HOST: no route into {net}: {exc}") from None
        address = str(probe.getsockname()[0])
    if ipaddress.ip_address(address) not in net:
        raise ConfigError(f"NYTH_TOR_LISTEN_HOST: this container has no address in {net} "
                          f"(the route there leaves from {address})")
    return address


def _resolve_own_name(name: str, deadline: float) -> str:
    """The address of one of this container's own names, which a container engine may
    add to its DNS only a moment after the container starts (Swarm: only once the task is
    healthy, which is why the Swarm stack gives the gateway a subnet instead)."""
    while True:
        try:
            return socket.gethostbyname(name)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} does not resolve: {exc}") from exc
            log.info("waiting for %s to resolve (%s)", name, exc)
            time.sleep(1.0)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _LogFollower:
    """Copies what tor appends to its log file to our stdout (for `docker logs`)."""

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        self.offset = 0

    def follow(self) -> None:
        """Pump once a second from a daemon thread (bootstrap progress shows up live)."""
        def loop() -> None:
            while True:
                self.pump()
                time.sleep(1.0)
        threading.Thread(target=loop, name=f"follow-{self.path}", daemon=True).start()

    def pump(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        if not data:
            return
        # Only whole lines; the rest comes next time.
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        for line in data[:cut].decode("utf-8", "replace").splitlines():
            sys.stdout.write(f"{self.prefix}{line}\n")
        sys.stdout.flush()


def run_network(args: argparse.Namespace) -> int:
    from nyth.tor.privnet import PrivateTorNetwork

    out = Path(args.client_torrc)
    out.unlink(missing_ok=True)
    host = args.host or _own_ip()
    base = Path(tempfile.mkdtemp(prefix="privnet-"))
    net = PrivateTorNetwork(base, authorities=args.authorities, relays=args.relays, host=host,
                            voting_interval=args.voting_interval)
    followers = [_LogFollower(base / nick / "tor.log", f"[{nick}] ") for nick in net.nicknames]
    for follower in followers:
        follower.follow()
    try:
        log.info("starting a private Tor network on %s (%d authorities, %d relays)",
                 host, args.authorities, args.relays)
        net.start(timeout=args.timeout)
        _write_atomic(out, "\n".join(net.client_torrc_lines()) + "\n")
        log.info("private Tor network ready in %.1fs; client options in %s",
                 net.startup_seconds or 0.0, out)
        while True:
            dead = [p for p in net.processes if not p.running]
            if dead:
                log.error("tor process(es) exited: %s\n%s",
                          ", ".join(p.name for p in dead), net.log_tail())
                return 1
            time.sleep(1.0)
    except _Stop:
        log.info("stopping the private Tor network")
        return 0
    finally:
        out.unlink(missing_ok=True)
        net.stop()
        shutil.rmtree(base, ignore_errors=True)


class FilteredGateway(TorGateway):
    """A TorGateway whose control port is Nyth's control filter.

    tor's real control port listens on 127.0.0.1:`internal_control_port` only (unreachable
    from other containers); the filter listens on `host`:`control_port` and relays to it.
    `control` is tor's own port (for bootstrap checks here); `filtered_control` is what
    clients use.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        control_password: str,
        control_port: int,
        internal_control_port: int,
        host: str,
        targets: TargetPolicy,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, control_password=control_password,
                         control_port=internal_control_port, host=host, **kwargs)
        self._filter_port = control_port
        self.targets = targets
        self._filter: ControlFilterThread | None = None

    @property
    def control(self) -> ControlEndpoint:
        return dataclasses.replace(super().control, host="127.0.0.1")

    @property
    def filtered_control(self) -> ControlEndpoint:
        return dataclasses.replace(super().control, port=self._filter_port)

    def torrc_lines(self) -> list[str]:
        lines = super().torrc_lines()
        internal = f"ControlPort 127.0.0.1:{self.control.port}"
        replaced = [internal if line.startswith("ControlPort ") else line for line in lines]
        if replaced.count(internal) != 1:
            raise RuntimeError("expected exactly one ControlPort line to move to loopback")
        return replaced

    def start(self, timeout: float = 120) -> None:
        super().start(timeout)
        if self._filter is None or not self._filter.running:
            proxy = ControlFilterProxy("127.0.0.1", self.control.port, targets=self.targets)
            self._filter = ControlFilterThread(proxy, self.host, self._filter_port)
            try:
                self._filter.start()
            except BaseException:
                super().stop()
                raise
            self._filter_port = self._filter.port

    @property
    def filter_running(self) -> bool:
        return self._filter is not None and self._filter.running

    def stop(self) -> None:
        if self._filter is not None:
            self._filter.stop()
            self._filter = None
        super().stop()


def connected_networks(route_table: str) -> list[ipaddress.IPv4Network]:
    """IPv4 networks this machine is directly attached to, from /proc/net/route's text.

    Destination and Mask are printed as 32-bit numbers in host byte order; a connected
    route has no gateway and the up flag.
    """
    found = []
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if gateway != 0 or not flags & 0x1 or mask == 0:
            continue
        with contextlib.suppress(ValueError, struct.error):
            address = ipaddress.IPv4Address(struct.pack("=I", destination))
            netmask = ipaddress.IPv4Address(struct.pack("=I", mask))
            found.append(ipaddress.IPv4Network(f"{address}/{netmask}"))
    return found


def onion_target_policy(listen: str, setting: str, route_table: str,
                        own_addresses: list[str]) -> TargetPolicy:
    """What the control filter lets onions point at.

    `setting` (NYTH_TOR_ONION_TARGET_NETWORKS, comma-separated networks or addresses)
    wins; otherwise the one network the gateway listens on (in the compose stack: the
    internal `tor` network, where every service's onion target is). Its first address is
    refused as well as the gateway's own: Docker gives it to the host's bridge.
    Raises ConfigError when neither says which network is meant.
    """
    if setting.strip():
        try:
            networks = [ipaddress.ip_network(part.strip(), strict=False)
                        for part in setting.split(",") if part.strip()]
        except ValueError as exc:
            raise ConfigError(f"NYTH_TOR_ONION_TARGET_NETWORKS: {exc}") from None
    else:
        address = ipaddress.ip_address(listen) if _is_ip(listen) else None
        if address is None or address.is_unspecified:
            raise ConfigError(
                "the gateway listens on every address, so the control filter cannot tell "
                "which network onions may point to: set NYTH_TOR_LISTEN_HOST to the "
                "gateway's address on the internal network, or NYTH_TOR_ONION_TARGET_NETWORKS")
        if address.version != 4:
            # /proc/net/route is IPv4 only; an IPv6 network has to be named.
            raise ConfigError(f"the gateway listens on the IPv6 address {listen}: set "
                              "NYTH_TOR_ONION_TARGET_NETWORKS to the internal network")
        networks = [net for net in connected_networks(route_table) if address in net]
        if not networks:
            raise ConfigError(f"no attached network holds the listen address {listen}: "
                              "set NYTH_TOR_ONION_TARGET_NETWORKS")
        networks = [min(networks, key=lambda net: net.num_addresses)]
    bridges = [str(net.network_address + 1) for net in networks if net.num_addresses > 4]
    return TargetPolicy.for_networks(networks, refused=[*own_addresses, *bridges])


def _route_table() -> str:
    try:
        return Path("/proc/net/route").read_text()
    except OSError:
        return ""


def gateway_addresses(listen: str) -> list[str]:
    """Addresses of this container: onions must not point there (tor's SOCKS port)."""
    found = {listen} if _is_ip(listen) else set()
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    return sorted(found)


def make_gateway(
    data_dir: Path,
    *,
    password: str,
    listen: str,
    socks_port: int,
    control_port: int,
    internal_control_port: int,
    filtered: bool,
    extra_torrc: list[str] | None = None,
    targets: TargetPolicy | None = None,
    **kwargs: Any,
) -> TorGateway:
    """The gateway `run_gateway` runs: behind the control filter unless `filtered` is off."""
    if not filtered:
        return TorGateway(data_dir, control_password=password, socks_port=socks_port,
                          control_port=control_port, host=listen,
                          extra_torrc=extra_torrc or [], **kwargs)
    if targets is None:
        targets = onion_target_policy(
            listen, os.environ.get("NYTH_TOR_ONION_TARGET_NETWORKS", ""), _route_table(),
            gateway_addresses(listen))
    return FilteredGateway(data_dir, control_password=password, socks_port=socks_port,
                           control_port=control_port, internal_control_port=internal_control_port,
                           host=listen, targets=targets, extra_torrc=extra_torrc or [], **kwargs)


def run_gateway(args: argparse.Namespace) -> int:
    from nyth.tor.privnet import TorLaunchError

    ready = Path(args.ready_file)
    ready.unlink(missing_ok=True)
    try:
        password = read_secret("tor_control_password", required=True)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    assert password is not None
    data_dir = Path(args.data_dir)
    private = bool(args.client_torrc) and os.environ.get("NYTH_TOR_PRIVATE_NETWORK", "1") != "0"
    client_lines: list[str] = []
    if private:
        client_lines = wait_for_announced_network(Path(args.client_torrc),
                                                 time.monotonic() + args.wait_timeout)
        # Each private network is new: state cached from an earlier one only slows tor down.
        shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    # A name (a network alias that only exists on the internal network) is resolved here,
    # so the ports never listen on another network this container is attached to.
    listen = args.listen_host
    if "/" in listen:
        listen = own_address_in(listen)
    elif listen not in ("0.0.0.0", "::", "") and not _is_ip(listen):
        listen = _resolve_own_name(listen, time.monotonic() + 120)
    filtered = os.environ.get("NYTH_TOR_CONTROL_FILTER", "1") != "0"
    try:
        gateway = make_gateway(
            data_dir, password=password, listen=listen, socks_port=args.socks_port,
            control_port=args.control_port, internal_control_port=args.internal_control_port,
            filtered=filtered, extra_torrc=client_lines,
        )
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if isinstance(gateway, FilteredGateway):
        log.info("onions may point only into %s", ", ".join(
            str(net) for net in gateway.targets.allowed_networks))
    _LogFollower(data_dir / "tor.log").follow()
    try:
        log.info("starting tor (%s): socks %s:%d, control %s:%d (%s)", "private network"
                 if private else "real Tor network", listen, args.socks_port, listen,
                 args.control_port, "through the control filter" if filtered
                 else "UNFILTERED: NYTH_TOR_CONTROL_FILTER=0")
        try:
            gateway.start(timeout=args.timeout)
        except TorLaunchError as exc:
            log.error("%s", exc)
            return 1
        ready.touch()
        log.info("tor gateway bootstrapped in %.1fs", gateway.bootstrap_seconds or 0.0)
        while True:
            if not gateway.running:
                log.error("tor exited\n%s", gateway.log_tail())
                return 1
            if isinstance(gateway, FilteredGateway) and not gateway.filter_running:
                log.error("the control filter stopped")
                return 1
            if private:
                now = announced_lines(Path(args.client_torrc))
                if now and now != client_lines:
                    log.warning("the private Tor network was replaced: exiting to rejoin it")
                    return 1
            time.sleep(1.0)
    except _Stop:
        log.info("stopping tor")
        return 0
    finally:
        ready.unlink(missing_ok=True)
        gateway.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # stem logs every control command at DEBUG on its own logger.
    logging.getLogger("stem").setLevel(logging.WARNING)
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m nyth.tor.container")
    sub = parser.add_subparsers(dest="cmd", required=True)
    net = sub.add_parser("network", help="run a private Tor network (authorities + relays)")
    net.add_argument("--host", default=env("NYTH_TOR_HOST", ""),
                     help="address to bind and advertise (default: this container's IP)")
    net.add_argument("--authorities", type=int, default=int(env("NYTH_TOR_AUTHORITIES", "3")))
    net.add_argument("--relays", type=int, default=int(env("NYTH_TOR_RELAYS", "2")))
    net.add_argument("--voting-interval", type=int,
                     default=int(env("NYTH_TOR_VOTING_INTERVAL", str(DEFAULT_VOTING_INTERVAL))),
                     help="seconds between consensuses (Onionbalance needs 20)")
    net.add_argument("--client-torrc", default=env("NYTH_TOR_CLIENT_TORRC_FILE", DEFAULT_CLIENT_TORRC))
    net.add_argument("--timeout", type=float, default=180.0)
    gw = sub.add_parser("gateway", help="run the tor gateway (SOCKS + control port)")
    gw.add_argument("--data-dir", default=env("NYTH_DATA_DIR", "/data") + "/tor")
    gw.add_argument("--listen-host", default=env("NYTH_TOR_LISTEN_HOST", "0.0.0.0"))
    gw.add_argument("--socks-port", type=int, default=int(env("NYTH_TOR_SOCKS_PORT", "9050")))
    gw.add_argument("--control-port", type=int, default=int(env("NYTH_TOR_CONTROL_PORT", "9051")))
    gw.add_argument("--internal-control-port", type=int,
                    default=int(env("NYTH_TOR_INTERNAL_CONTROL_PORT", "9151")),
                    help="tor's own control port, on 127.0.0.1 behind the control filter")
    gw.add_argument("--client-torrc", default=env("NYTH_TOR_CLIENT_TORRC_FILE", ""),
                    help="private network options file (unset: the real Tor network)")
    gw.add_argument("--ready-file", default=env("NYTH_TOR_READY_FILE", DEFAULT_READY_FILE))
    gw.add_argument("--wait-timeout", type=float, default=600.0)
    gw.add_argument("--timeout", type=float, default=float(env("NYTH_TOR_BOOTSTRAP_TIMEOUT", "300")))
    sub.add_parser("onionbalance", help="run the Onionbalance front of a service's replicas "
                                        "(settings: nyth.tor.onionbalance_front)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        if args.cmd == "onionbalance":
            from nyth.tor.onionbalance_front import run_front

            return run_front()
        return run_network(args) if args.cmd == "network" else run_gateway(args)
    except _Stop:
        return 0
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except TimeoutError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
