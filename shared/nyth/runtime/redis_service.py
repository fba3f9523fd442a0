"""What the Redis-backed onion services (group server, mailbox) share outside their app:
the `python -m` entry point, and starting one as a real process for tests and benchmarks."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from nyth.config import ConfigError, load_settings
from nyth.keystore import write_private_file
from nyth.ports import free_port
from nyth.runtime.process import ServiceProcess


def serve(prog: str, settings_cls: type[Any], create_app: Callable[[Any], Any]) -> int:
    """Load settings from the environment and run the app with uvicorn; returns the exit
    status for ``python -m``.

    The onion is published through the tor gateway when NYTH_TOR_CONTROL is set. SIGTERM
    / SIGINT stop it cleanly: uvicorn stops accepting and ends open SSE streams, then the
    app's lifespan closes the onion publisher and Redis.
    """
    try:
        settings = load_settings(settings_cls)
    except ConfigError as exc:
        # Only our own message: pydantic's would echo input values, secrets included.
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        server_header=False,
        # Behind tor every client is the tor gateway; forwarded headers mean nothing.
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        # Everyone reaches us through tor as one client: only a process-wide cap bounds a
        # flood of connections (each costs memory and a task).
        limit_concurrency=settings.max_connections,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


class RedisServiceProcess(ServiceProcess):
    """``python -m <module>`` on 127.0.0.1:port, with its base URL."""

    module = ""
    default_name = ""
    default_stream_key = ""

    def __init__(
        self,
        data_dir: Path,
        *,
        redis_url: str | None,
        name: str | None = None,
        port: int | None = None,
        stream_key: str | None = None,
        passphrase: str | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        data_dir = Path(data_dir)
        self.port = port or free_port()
        # The passphrase goes through a file, as with Docker secrets: it never has to be
        # in the child's environment.
        # Without a passphrase, a random one is made once and kept beside data_dir, so a
        # second process on the same data_dir unseals the same key.
        secret = data_dir.parent / f"{data_dir.name}.passphrase"
        if passphrase is not None:
            write_private_file(secret, passphrase.encode())
        elif not secret.exists():
            write_private_file(secret, secrets.token_urlsafe(24).encode())
        full_env = {
            "NYTH_DATA_DIR": str(data_dir),
            "NYTH_LISTEN_HOST": "127.0.0.1",
            "NYTH_LISTEN_PORT": str(self.port),
            "NYTH_STREAM_KEY": stream_key or self.default_stream_key,
            "NYTH_KEY_PASSPHRASE_FILE": str(secret),
            # None: env names the sentinels instead (NYTH_REDIS_SENTINELS excludes a URL).
            **({"NYTH_REDIS_URL": redis_url} if redis_url is not None else {}),
            **(env or {}),
        }
        super().__init__(
            name or self.default_name, [sys.executable, "-m", self.module], full_env,
            health_url=f"{self.base_url}/healthz",
            log_path=data_dir.parent / f"{data_dir.name}.log",
            start_timeout=start_timeout,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RedisServiceProcess:
        self.start()
        return self
