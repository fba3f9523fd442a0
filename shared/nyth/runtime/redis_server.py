"""A real redis-server process configured the way Nyth services rely on it.

Durability contract: AOF with ``appendfsync always``, so a write Redis acknowledged is
on disk before the reply, and a kill -9 of redis-server loses nothing acknowledged.
RDB snapshots are off: they would only add fork pauses and a second, staler copy.
"""

from __future__ import annotations

import socket
from pathlib import Path

from nyth.ports import free_port
from nyth.runtime.process import ManagedProcess


class RedisServer(ManagedProcess):
    """``redis-server`` bound to host only, data (AOF) in data_dir.

    port=0 picks a free port once; restarts keep it, so ``url`` stays valid.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        executable: str = "redis-server",
        databases: int = 64,
        start_timeout: float = 20.0,
        stop_grace: float = 10.0,
        replica_of: tuple[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.executable = executable
        self.databases = databases
        self.name = f"redis-server:{self.port}"
        self.log_path = self.data_dir / "redis.log"
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        # Where it starts as a replica; Sentinel may change its role later (until the
        # next start, which writes the configuration afresh).
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{db}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    def _config(self) -> str:
        return "\n".join([
            f"bind {self.host}",
            "protected-mode yes",
            f"port {self.port}",
            f"dir {self.data_dir}",
            # The log goes to stdout, which the harness captures into redis.log.
            'logfile ""',
            "daemonize no",
            "appendonly yes",
            "appendfsync always",
            'save ""',
            f"databases {self.databases}",
            # Keeps the AOF from growing without bound in long benchmarks; rewrites
            # keep appendfsync always semantics for new writes.
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 64mb",
            *([f"replicaof {self.replica_of[0]} {self.replica_of[1]}"] if self.replica_of else []),
            "",
        ])

    def _command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        return [self.executable, str(self.config_path)], None, self.data_dir

    def _is_ready(self) -> bool:
        return self.ping()

    def ping(self, timeout: float = 1.0) -> bool:
        """True once Redis answers PONG (not -LOADING while it replays the AOF)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        self.start()
        return self
