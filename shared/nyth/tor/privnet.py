"""A private Tor network on one machine: directory authorities + relays on loopback.

This is how chutney (the Tor Project's test tool) does it, trimmed to what onion
services need. Measured facts and the reasons behind the options are in
/work/shared/notes/private-tor-network.md; the short version is in the comments below.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from nyth.ports import free_port

log = logging.getLogger(__name__)

TOR_BINARY = "tor"
TOR_GENCERT_BINARY = "tor-gencert"

# What an onion service path needs from every relay: HSDir to store descriptors,
# Guard/Fast/Stable to be picked for the client and service ends of circuits.
REQUIRED_FLAGS = frozenset({"Running", "Valid", "Fast", "Stable", "Guard", "HSDir"})

# Seconds; tor's minimum for a test network. Consensus every 10 s, votes 4 s before.
DEFAULT_VOTING_INTERVAL = 10
# What Onionbalance's testnet mode assumes (chutney's): it derives the onion service time
# period (24 voting intervals) from it, and blinds the front's key for that period.
ONIONBALANCE_VOTING_INTERVAL = 20
# Onionbalance stores each of 2 descriptor replicas on 4 HSDirs, all distinct: with fewer
# than 8 in the consensus, its placement loop never ends (seen: 100 % CPU, nothing
# published).
ONIONBALANCE_MIN_HSDIRS = 8
# Seconds between launch and the first voting boundary: relays must have uploaded their
# descriptors by the vote (boundary - 4 s) or they miss the first consensus.
_FIRST_BOUNDARY_LEAD = 7



class TorLaunchError(RuntimeError):
    """A tor process failed to start or did not get ready in time; message has log tails."""


def torrc_quote(value: str) -> str:
    """Quote a torrc value (paths may hold spaces); tor parses C-style quoted strings."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 200 * lines))
            data = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ["(no log yet)"]
    return data.splitlines()[-lines:]


class TorProcess:
    """One tor process with its own data dir, torrc and log file; stopped by pid."""

    def __init__(self, name: str, data_dir: Path, torrc_lines: Sequence[str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.torrc = data_dir / "torrc"
        # stdout (where `Log notice stdout` writes) goes here: it also catches errors
        # tor prints before it has parsed its Log options.
        self.log_path = data_dir / "tor.log"
        self._torrc_lines = list(torrc_lines)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def write_torrc(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # tor refuses a DataDirectory other users can read.
        self.data_dir.chmod(0o700)
        self.torrc.write_text("\n".join(self._torrc_lines) + "\n")
        self.torrc.chmod(0o600)

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.write_torrc()
        defaults = self.data_dir / "torrc-defaults"
        # An empty defaults file, so a system-wide torrc-defaults never leaks in.
        defaults.touch()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"---- {time.strftime('%H:%M:%S')} launching {self.name}\n".encode())
            log_file.flush()
            self._process = subprocess.Popen(
                [TOR_BINARY, "-f", str(self.torrc), "--defaults-torrc", str(defaults)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        log.debug("started %s (pid %s)", self.name, self._process.pid)

    def signal(self, signum: int) -> None:
        if self.running and self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def wait(self, timeout: float) -> bool:
        """True if the process has exited within timeout (or never ran)."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (tor exits at once on it), then SIGKILL if it lingers; always reaped."""
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10.0)

    def log_tail(self, lines: int = 30) -> str:
        body = "\n".join(_tail(self.log_path, lines))
        state = "running" if self.running else f"exited with {self.returncode}"
        return f"==== {self.name} ({state}) {self.log_path}\n{body}"


def stop_all(processes: Iterable[TorProcess], timeout: float = 10.0) -> None:
    """Signal every process first, then wait: stopping n tors costs one wait, not n."""
    procs = list(processes)
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        if not proc.wait(deadline - time.monotonic()):
            proc.kill()


@dataclass
class _Node:
    nick: str
    authority: bool
    data_dir: Path
    or_port: int
    dir_port: int | None = None
    fingerprint: str = ""
    v3ident: str = ""
    process: TorProcess | None = None
    flags: set[str] = field(default_factory=set)


def _run(argv: list[str], *, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False)


def parse_consensus_flags(consensus: str) -> dict[str, set[str]]:
    """nickname -> flags from a (microdesc) consensus document."""
    flags: dict[str, set[str]] = {}
    current: str | None = None
    for line in consensus.splitlines():
        if line.startswith("r "):
            parts = line.split()
            current = parts[1] if len(parts) > 1 else None
        elif line.startswith("s ") and current is not None:
            flags[current] = set(line.split()[1:])
            current = None
    return flags


class PrivateTorNetwork:
    """Directory authorities and relays for an offline Tor network on one host.

    `start()` blocks until every authority serves a consensus in which every node has
    the flags onion services need; clients started after that bootstrap in seconds.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        authorities: int = 3,
        relays: int = 2,
        host: str = "127.0.0.1",
        voting_interval: int = DEFAULT_VOTING_INTERVAL,
    ) -> None:
        if authorities < 1:
            raise ValueError("a Tor network needs at least one directory authority")
        if authorities + relays < 4:
            # Measured: with fewer than 4 relays every onion connect times out
            # ("Failed to find node for hop #3").
            raise ValueError("onion services need at least 4 relays (authorities count)")
        if not 10 <= voting_interval <= 300:
            raise ValueError("the voting interval must be 10..300 s")
        self.base_dir = Path(base_dir)
        self.host = host
        self.voting_interval = voting_interval
        self._nodes: list[_Node] = [
            _Node(f"auth{i}", True, self.base_dir / f"auth{i}", 0) for i in range(authorities)
        ] + [_Node(f"relay{i}", False, self.base_dir / f"relay{i}", 0) for i in range(relays)]
        self._started = False
        self.startup_seconds: float | None = None

    # -- public -----------------------------------------------------------------

    @property
    def nicknames(self) -> list[str]:
        return [node.nick for node in self._nodes]

    @property
    def authority_dirports(self) -> list[tuple[str, int]]:
        return [(self.host, n.dir_port) for n in self._nodes if n.authority and n.dir_port]

    @property
    def processes(self) -> list[TorProcess]:
        return [n.process for n in self._nodes if n.process is not None]

    def start(self, timeout: float = 120) -> None:
        if self._started:
            raise RuntimeError("private Tor network already started")
        self._started = True
        began = time.monotonic()
        deadline = began + timeout
        try:
            self._prepare_keys()
            self._launch()
            self._wait_for_consensus(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info("private Tor network ready in %.1fs", self.startup_seconds)

    def stop(self) -> None:
        stop_all(self.processes)

    def client_torrc_lines(self) -> list[str]:
        """Options every client (gateway) on this network needs."""
        if not all(n.fingerprint and n.v3ident for n in self._nodes if n.authority):
            raise RuntimeError("start() the network before asking for client options")
        return [
            "TestingTorNetwork 1",
            *self._dir_authority_lines(),
            "PathsNeededToBuildCircuits 0.25",
            # KIST adds ≈ 15 ms per round trip on loopback; Vanilla does not.
            "Schedulers Vanilla",
            # Fetch from the authorities at once: relay caches lag and 404 for seconds.
            "FetchDirInfoEarly 1",
            "FetchDirInfoExtraEarly 1",
            # With a handful of relays, vanguard paths often cannot be built.
            "VanguardsLiteEnabled 0",
            'GeoIPFile ""',
            'GeoIPv6File ""',
            "NumCPUs 1",
        ]

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of every node's log, for failure messages."""
        return "\n".join(n.process.log_tail(lines) for n in self._nodes if n.process is not None)

    def consensus_flags(self) -> dict[str, set[str]]:
        """nickname -> flags in the first authority's current consensus ({} if none yet)."""
        for host, port in self.authority_dirports:
            text = self._fetch_consensus(host, port)
            if text is not None:
                return parse_consensus_flags(text)
        return {}

    def __enter__(self) -> PrivateTorNetwork:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steps ------------------------------------------------------------------

    def _prepare_keys(self) -> None:
        for node in self._nodes:
            node.or_port = free_port(self.host)
            if node.authority:
                node.dir_port = free_port(self.host)
            (node.data_dir / "keys").mkdir(parents=True, exist_ok=True)
            node.data_dir.chmod(0o700)
        # Key generation is CPU bound and ≈ 0.7 s per authority: run them side by side.
        gencerts = {
            node.nick: subprocess.Popen(
                [
                    TOR_GENCERT_BINARY,
                    "--create-identity-key",
                    "-m", "12",
                    "-a", f"{self.host}:{node.dir_port}",
                    "-i", "keys/authority_identity_key",
                    "-s", "keys/authority_signing_key",
                    "-c", "keys/authority_certificate",
                    "--passphrase-fd", "0",
                ],
                cwd=node.data_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for node in self._nodes
            if node.authority
        }
        fingerprints = {
            node.nick: subprocess.Popen(
                [
                    TOR_BINARY,
                    "--ignore-missing-torrc", "-f", "/dev/null",
                    "--defaults-torrc", "/dev/null",
                    "--quiet", "--list-fingerprint",
                    "--orport", "1",
                    "--nickname", node.nick,
                    "--datadirectory", str(node.data_dir),
                ],
                cwd=node.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for node in self._nodes
        }
        for nick, proc in gencerts.items():
            # The identity key is for a throwaway network: an empty passphrase is fine.
            out, _ = proc.communicate(b"\n", timeout=60)
            if proc.returncode != 0:
                raise TorLaunchError(f"tor-gencert failed for {nick}: {out.decode(errors='replace')}")
        for node in self._nodes:
            proc = fingerprints[node.nick]
            out, _ = proc.communicate(timeout=60)
            text = out.decode(errors="replace").strip()
            if proc.returncode != 0 or not text:
                raise TorLaunchError(f"tor --list-fingerprint failed for {node.nick}: {text}")
            # Output: "<nick> ABCD 1234 ..." (space-grouped hex).
            node.fingerprint = "".join(text.splitlines()[-1].split()[1:])
            if node.authority:
                cert = (node.data_dir / "keys" / "authority_certificate").read_text()
                for line in cert.splitlines():
                    if line.startswith("fingerprint "):
                        node.v3ident = line.split()[1]
                if not node.v3ident:
                    raise TorLaunchError(f"no v3 identity in {node.nick}'s authority certificate")

    def _dir_authority_lines(self) -> list[str]:
        return [
            f"DirAuthority {n.nick} orport={n.or_port} no-v2 v3ident={n.v3ident} "
            f"{self.host}:{n.dir_port} {n.fingerprint}"
            for n in self._nodes
            if n.authority
        ]

    def _node_torrc(self, node: _Node, voting_offset: int) -> list[str]:
        lines = [
            "TestingTorNetwork 1",
            f"DataDirectory {torrc_quote(str(node.data_dir))}",
            f"Nickname {node.nick}",
            "RunAsDaemon 0",
            "Log notice stdout",
            # Dies by itself if the launcher dies (tor polls the pid every few seconds).
            f"__OwningControllerProcess {os.getpid()}",
            *self._dir_authority_lines(),
            "PathsNeededToBuildCircuits 0.25",
            "ShutdownWaitLength 0",
            "Schedulers Vanilla",
            'GeoIPFile ""',
            'GeoIPv6File ""',
            "NumCPUs 1",
            "SocksPort 0",
            f"Address {self.host}",
            f"ORPort {self.host}:{node.or_port}",
            # Onion services never leave the network: no exits needed.
            "ExitRelay 0",
            "ExitPolicy reject *:*",
            "AssumeReachable 1",
            # Relays pick the same voting schedule, so they fetch the first consensus on time.
            f"TestingV3AuthVotingStartOffset {voting_offset}",
        ]
        if node.authority:
            lines += [
                "AuthoritativeDirectory 1",
                "V3AuthoritativeDirectory 1",
                f"DirPort {self.host}:{node.dir_port}",
                f"V3AuthVotingInterval {self.voting_interval}",
                f"TestingV3AuthInitialVotingInterval {self.voting_interval}",
                "V3AuthVoteDelay 2",
                "TestingV3AuthInitialVoteDelay 2",
                "V3AuthDistDelay 2",
                "TestingV3AuthInitialDistDelay 2",
                "V3AuthNIntervalsValid 2",
                "TestingDirAuthVoteGuard *",
                "TestingDirAuthVoteHSDir *",
                # Without these, a young network leaves relays without Fast/Stable for
                # minutes and clients stall at 95 %.
                "AuthDirVoteStableGuaranteeMinUptime 0",
                "AuthDirVoteStableGuaranteeMTBF 0",
                "AuthDirFastGuarantee 1 bytes",
                # Every relay shares one address here.
                "AuthDirMaxServersPerAddr 0",
            ]
        return lines

    def _launch(self) -> None:
        # Put the first voting boundary _FIRST_BOUNDARY_LEAD seconds from now.
        first = math.ceil(time.time() + _FIRST_BOUNDARY_LEAD)
        offset = first % self.voting_interval
        for node in self._nodes:
            node.process = TorProcess(node.nick, node.data_dir, self._node_torrc(node, offset))
            node.process.start()

    def _fetch_consensus(self, host: str, port: int) -> str | None:
        url = f"http://{host}:{port}/tor/status-vote/current/consensus-microdesc"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return None
        return body.decode("utf-8", "replace")

    def _missing(self) -> dict[str, str]:
        """Per authority: what is still missing from its consensus ({} when all is there)."""
        missing: dict[str, str] = {}
        for node in self._nodes:
            if not node.authority or node.dir_port is None:
                continue
            text = self._fetch_consensus(self.host, node.dir_port)
            if text is None:
                missing[node.nick] = "no consensus yet"
                continue
            flags = parse_consensus_flags(text)
            gaps = []
            for other in self._nodes:
                have = flags.get(other.nick)
                if have is None:
                    gaps.append(f"{other.nick} absent")
                elif not REQUIRED_FLAGS <= have:
                    gaps.append(f"{other.nick} lacks {','.join(sorted(REQUIRED_FLAGS - have))}")
            if gaps:
                missing[node.nick] = "; ".join(gaps)
        return missing

    def _wait_for_consensus(self, deadline: float) -> None:
        missing: dict[str, str] = {"all": "not checked yet"}
        while time.monotonic() < deadline:
            for node in self._nodes:
                if node.process is not None and not node.process.running:
                    raise TorLaunchError(
                        f"{node.nick} exited with {node.process.returncode} during startup\n"
                        + self.log_tail()
                    )
            missing = self._missing()
            if not missing:
                return
            time.sleep(0.5)
        detail = "; ".join(f"{k}: {v}" for k, v in missing.items())
        raise TorLaunchError(
            f"private Tor network not ready before the deadline ({detail})\n" + self.log_tail()
        )


def _authority_dirports(lines: list[str]) -> list[tuple[str, int]]:
    found = []
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "DirAuthority":
            for part in parts[2:]:
                host, sep, port = part.rpartition(":")
                if sep and port.isdigit() and "=" not in part:
                    found.append((host, int(port)))
                    break
    return found


def _served_consensus(dirports: list[tuple[str, int]]) -> str | None:
    for host, port in dirports:
        url = f"http://{host}:{port}/tor/status-vote/current/consensus-microdesc"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return str(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, TimeoutError):
            continue
    return None


def _consensus_served(dirports: list[tuple[str, int]]) -> bool:
    return _served_consensus(dirports) is not None


@dataclass(frozen=True)
class ConsensusSummary:
    voting_interval: int  # seconds: fresh-until - valid-after
    hsdirs: int  # relays with the HSDir flag


def announced_consensus(lines: list[str]) -> ConsensusSummary | None:
    """What the announced network's current consensus says, or None when no authority
    serves one."""
    consensus = _served_consensus(_authority_dirports(lines))
    if consensus is None:
        return None
    times = {}
    hsdirs = 0
    for line in consensus.splitlines():
        key, _, value = line.partition(" ")
        if key in ("valid-after", "fresh-until"):
            times[key] = calendar.timegm(time.strptime(value.strip(), "%Y-%m-%d %H:%M:%S"))
        elif key == "s" and "HSDir" in value.split():
            hsdirs += 1
    if len(times) != 2:
        return None
    return ConsensusSummary(times["fresh-until"] - times["valid-after"], hsdirs)


def announced_lines(path: Path) -> list[str]:
    """The client options in the file a `network` container writes (none while there is
    no file): a change means a new network, which its clients must restart on."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def wait_for_announced_network(path: Path, deadline: float) -> list[str]:
    """The client options of a private network once the file its `network` container
    writes exists and one of its authorities serves a consensus."""
    announced = False
    while time.monotonic() < deadline:
        lines = announced_lines(path)
        if lines and _consensus_served(_authority_dirports(lines)):
            return lines
        if not announced:
            log.info("waiting for the private Tor network (%s)", path)
            announced = True
        time.sleep(1.0)
    raise TimeoutError(f"no private Tor network announced in {path} before the deadline")
