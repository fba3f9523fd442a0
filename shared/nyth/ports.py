"""Free TCP ports for processes we launch (tor, redis-server, services)."""

from __future__ import annotations

import socket
import threading

_lock = threading.Lock()
_handed_out: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host now and was not handed out before by this process.

    There is a window between closing the probe socket and the child binding the port;
    the set of handed-out ports keeps our own parallel launches from colliding in it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _lock:
        for _ in range(100):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
    raise OSError(f"no free TCP port found on {host}")
