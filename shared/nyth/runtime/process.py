"""Run a Nyth service as a real OS process (dev mode, test harness, benchmarks).

Tests drive services the way production does: a separate process, reached over HTTP,
stopped with signals. That is what makes "kill -9 during a burst, restart, nothing
acknowledged is lost" a meaningful test, which an in-process app cannot give.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

# Children still running when the interpreter exits (a failed test run, Ctrl-C) are
# killed, so no redis-server or service outlives the harness and holds its port.
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.kill()


def tail_file(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class ProcessError(RuntimeError):
    """A managed process failed to start or died; the message carries its log tail."""


class ManagedProcess:
    """Common start/stop/kill logic; subclasses say how to tell the process is ready."""

    name: str
    log_path: Path
    stop_grace: float
    start_timeout: float

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    # -- subclass hooks -------------------------------------------------------------
    def _command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        return tail_file(self.log_path, lines)

    def start(self) -> None:
        """Spawn the process and block until it is ready; raise ProcessError otherwise."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        argv, env, cwd = self._command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name}: starting {' '.join(argv)}\n".encode())
            log.flush()
            # A new session keeps a terminal's Ctrl-C from reaching the child before the
            # harness can stop it in order; the atexit hook still reaps it.
            self._proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        _LIVE.add(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            code = self.returncode
            if code is not None:
                raise ProcessError(
                    f"{self.name} exited with code {code} during start-up; log tail:\n"
                    f"{self.log_tail()}"
                )
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ProcessError(
                    f"{self.name} was not ready after {self.start_timeout:.0f} s; log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if still alive after grace seconds. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        _LIVE.discard(self)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: no clean-up at all, as in a crash or an OOM kill."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        _LIVE.discard(self)
        return proc.returncode

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with hard=True) and start again with the same config."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServiceProcess(ManagedProcess):
    """A service started as ``argv`` (e.g. ``[sys.executable, "-m", "nyth_group_server"]``).

    env is added on top of the current environment (PATH, the venv...) unless
    inherit_env is False. Readiness is a 200 from health_url; without one, the process
    counts as started once it has stayed alive for a moment.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        health_url: str | None,
        log_path: Path,
        cwd: Path | None = None,
        inherit_env: bool = True,
        start_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.health_url = health_url
        self.log_path = log_path
        self.cwd = cwd
        self.inherit_env = inherit_env
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._started_at = 0.0

    @classmethod
    def python_module(
        cls, name: str, module: str, env: Mapping[str, str], **kwargs: object
    ) -> ServiceProcess:
        """``python -m module`` with this interpreter (so the same venv)."""
        return cls(name, [sys.executable, "-m", module], env, **kwargs)  # type: ignore[arg-type]

    def _command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        # Unbuffered output, so the log tail shows the last words of a crashed child.
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._started_at = time.monotonic()
        return self.argv, env, self.cwd

    def _is_ready(self) -> bool:
        if self.health_url is None:
            return time.monotonic() - self._started_at > 0.5
        try:
            response = httpx.get(self.health_url, timeout=2.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self
