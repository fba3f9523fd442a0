"""Start a mailbox as a real process (tests, benchmarks, dev scripts)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from nyth.keystore import write_private_file
from nyth.ports import free_port
from nyth.runtime.process import ServiceProcess


class MailboxProcess(ServiceProcess):
    """``python -m nyth_mailbox`` on 127.0.0.1:port, with its base URL."""

    def __init__(
        self,
        data_dir: Path,
        *,
        redis_url: str,
        name: str = "mailbox",
        port: int | None = None,
        stream_key: str = "nyth:mailbox",
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
            "NYTH_REDIS_URL": redis_url,
            "NYTH_STREAM_KEY": stream_key,
            "NYTH_KEY_PASSPHRASE_FILE": str(secret),
            **(env or {}),
        }
        super().__init__(
            name, [sys.executable, "-m", "nyth_mailbox"], full_env,
            health_url=f"{self.base_url}/healthz",
            log_path=data_dir.parent / f"{data_dir.name}.log",
            start_timeout=start_timeout,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MailboxProcess:
        self.start()
        return self
