"""Redis with failover as local processes: a primary, one replica and three sentinels,
all bound to loopback, for tests and benchmarks (docs/operations.md, "Redis failover").

Three sentinels with a quorum of two: one sentinel alone can neither declare the primary
dead nor elect itself to run the failover, so a single slow sentinel cannot cause one,
as long as the detection time (DOWN_AFTER_MS) is longer than the 5 s for which a
sentinel keeps the others' "the primary is down" answers (below). It is still short next
to Sentinel's default of 30 s, which a deployment keeps (docs), so a test's failover
takes seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

from nyth.config import format_host_port
from nyth.ports import free_port
from nyth.runtime.process import ManagedProcess, ProcessError
from nyth.runtime.redis_server import RedisServer

SERVICE_NAME = "nyth"
QUORUM = 2
# A sentinel that switches to a new primary keeps the other sentinels' answers that the
# old one was down for 5 s (Redis 7.0, sentinel.c: SENTINEL_ASK_PERIOD * 5) and counts
# them for the new one. With 1 s, one sentinel missing the new primary's first PONG for
# a second on a loaded machine made that a quorum, and a second failover went back to
# the old primary just restarted with stale data. Longer than 5 s, a sentinel has to
# find a real quorum first.
DOWN_AFTER_MS = 6000
# Written by replica_confirms_writes, in database 0 (tests and benchmarks use others).
PROBE_KEY = "nyth:sentinel-cluster:probe"


class RedisSentinel(ManagedProcess):
    """``redis-server <conf> --sentinel`` watching one primary under service_name."""

    def __init__(
        self,
        data_dir: Path,
        *,
        primary: tuple[str, int],
        service_name: str = SERVICE_NAME,
        port: int = 0,
        host: str = "127.0.0.1",
        executable: str = "redis-server",
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = 5000,
        start_timeout: float = 20.0,
        stop_grace: float = 10.0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.primary = primary
        self.service_name = service_name
        self.executable = executable
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.name = f"redis-sentinel:{self.port}"
        self.log_path = self.data_dir / "sentinel.log"
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._configured = False

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "sentinel.conf"

    def _config(self) -> str:
        name = self.service_name
        return "\n".join([
            f"bind {self.host}",
            f"port {self.port}",
            f"dir {self.data_dir}",
            'logfile ""',
            "daemonize no",
            f"sentinel monitor {name} {self.primary[0]} {self.primary[1]} {QUORUM}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            "",
        ])

    def _command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its own file with what it learnt (replicas, other sentinels,
        # the current primary): a restart keeps that state instead of starting over.
        if not self._configured:
            self.config_path.write_text(self._config())
            self._configured = True
        return [self.executable, str(self.config_path), "--sentinel"], None, self.data_dir

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, socket_timeout=2.0,
                           socket_connect_timeout=2.0, decode_responses=True)

    def master_state(self) -> dict[str, str] | None:
        """SENTINEL MASTER <name> as a dict, or None if this sentinel does not answer."""
        try:
            with self.client() as client:
                state = client.execute_command("SENTINEL", "MASTER", self.service_name)
        except redis.RedisError:
            return None
        if isinstance(state, list):  # RESP2: a flat list of alternating keys and values
            state = dict(zip(state[::2], state[1::2], strict=True))
        return {str(k): str(v) for k, v in state.items()}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll condition until it holds; ProcessError naming what did not happen in time."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not condition():
        if time.monotonic() > deadline:
            raise ProcessError(f"{what}: not after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class SentinelCluster:
    """A primary, a replica and three sentinels, each a process of its own in data_dir.

    ``redis_env()`` is what a service needs to reach the primary through the sentinels.
    ``primary`` / ``replica`` are the servers' roles at start; after a failover the
    current primary is `current_primary()`.
    """

    def __init__(self, data_dir: Path, *, service_name: str = SERVICE_NAME,
                 databases: int = 16, sentinels: int = 3,
                 down_after_ms: int = DOWN_AFTER_MS) -> None:
        data_dir = Path(data_dir)
        self.service_name = service_name
        self.primary = RedisServer(data_dir / "primary", databases=databases)
        self.replica = RedisServer(data_dir / "replica", databases=databases,
                                   replica_of=(self.primary.host, self.primary.port))
        self.sentinels = [
            RedisSentinel(data_dir / f"sentinel-{i}", service_name=service_name,
                          primary=(self.primary.host, self.primary.port),
                          down_after_ms=down_after_ms)
            for i in range(sentinels)
        ]
        self.servers = (self.primary, self.replica)

    def start(self, timeout: float = 30.0) -> None:
        """Start everything and return once the replica confirms writes and every
        sentinel knows the replica and the other sentinels (a failover needs all of it)."""
        try:
            self.primary.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            wait_until(lambda: self.replica_confirms_writes(self.primary), timeout,
                       "replica in sync with the primary, confirming writes")
            wait_until(self._sentinels_see_everything, timeout,
                       "sentinels know the replica and each other")
        except BaseException:
            self.stop()
            raise

    def _sentinels_see_everything(self) -> bool:
        others = str(len(self.sentinels) - 1)
        for sentinel in self.sentinels:
            state = sentinel.master_state()
            if (state is None or state.get("num-slaves") != "1"
                    or state.get("num-other-sentinels") != others):
                return False
        return True

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.primary]:
            process.stop()

    @staticmethod
    def replicas_online(server: RedisServer) -> int:
        """How many replicas are connected to server and in sync (0 if it is down)."""
        try:
            with redis.Redis(server.host, server.port, socket_timeout=2.0,
                             decode_responses=True) as client:
                info = client.info("replication")
        except redis.RedisError:
            return 0
        return sum(1 for key, value in info.items()
                   if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    @staticmethod
    def replica_confirms_writes(server: RedisServer, timeout_ms: int = 100) -> bool:
        """Whether a replica confirms a write on server (WAIT 1) within timeout_ms.

        What a service with NYTH_REDIS_WAIT_REPLICAS=1 needs, and more than
        `replicas_online`: after a full resync the primary lists the replica online, but
        streams writes to it only from the first REPLCONF ACK it gets after that. The
        replica's immediate ACK can arrive just before (while the primary has not yet
        seen its RDB child end), and the next one comes with the replica's once-a-second
        cron: until then WAIT times out.
        """
        try:
            with redis.Redis(server.host, server.port,
                             socket_timeout=2.0 + timeout_ms / 1000) as client:
                client.incr(PROBE_KEY)  # WAIT counts the writes of its own connection
                return int(client.execute_command("WAIT", 1, timeout_ms)) >= 1
        except redis.RedisError:
            return False

    def redis_env(self, db: int = 0) -> dict[str, str]:
        return {
            "NYTH_REDIS_SENTINELS": ",".join(s.address for s in self.sentinels),
            "NYTH_REDIS_SENTINEL_SERVICE": self.service_name,
            "NYTH_REDIS_DB": str(db),
        }

    def current_primary(self) -> tuple[str, int] | None:
        """The primary a majority of the answering sentinels name; None if none agree."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            state = sentinel.master_state()
            if state is None or "ip" not in state:
                continue
            address = (state["ip"], int(state["port"]))
            votes[address] = votes.get(address, 0) + 1
        for address, count in votes.items():
            if count >= QUORUM:
                return address
        return None

    def wait_for_primary(self, server: RedisServer, timeout: float = 60.0) -> None:
        """Until the sentinels name server as the primary and it acts as one."""
        def promoted() -> bool:
            if self.current_primary() != (server.host, server.port):
                return False
            try:
                with redis.Redis(server.host, server.port, socket_timeout=2.0,
                                 decode_responses=True) as client:
                    return bool(client.info("replication").get("role") == "master")
            except redis.RedisError:
                return False
        wait_until(promoted, timeout, f"{server.name} promoted to primary")

    def __enter__(self) -> SentinelCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
