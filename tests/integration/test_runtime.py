"""nyth.runtime: real redis-server and service processes, as the harness uses them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import redis
from nyth.ports import free_port
from nyth.runtime.process import ProcessError, ServiceProcess
from nyth.runtime.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_redis_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("save") == {"save": ""}
        acknowledged = [client.xadd("s", {"b": b"%d" % i}) for i in range(200)]
        client.close()
        port = server.port
        server.kill()
        assert not server.running and not server.ping()
        server.start()
        assert server.port == port
        client = redis.Redis.from_url(server.url)
        entries = client.xrange("s")
        assert entries is not None  # redis-py types a sync reply as Optional
        assert [entry[0] for entry in entries] == acknowledged
        client.close()
        server.restart()
        assert server.ping()
    finally:
        server.stop()
    assert server.returncode == 0
    assert "ready to exit" in server.log_tail(5).lower()


def test_redis_binds_only_the_requested_host(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        client.close()


def test_service_process_health_stop_and_kill(tmp_path: Path) -> None:
    port = free_port()
    # A stand-in service: any process with a /healthz works.
    code = (
        "import http.server, signal, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        f"print('serving', flush=True)\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    proc = ServiceProcess("stand-in", [sys.executable, "-c", code], {},
                          health_url=f"http://127.0.0.1:{port}/healthz",
                          log_path=tmp_path / "svc.log", start_timeout=10)
    proc.start()
    assert proc.running and proc.pid
    assert proc.stop() == 7  # SIGTERM reached the handler
    proc.restart()
    assert proc.kill() == -9
    assert "serving" in proc.log_tail()


def test_service_process_reports_a_crash_with_its_log(tmp_path: Path) -> None:
    proc = ServiceProcess("crasher", [sys.executable, "-c", "import sys; print('bad config');"
                                      " sys.exit(3)"], {},
                          health_url="http://127.0.0.1:9/healthz", log_path=tmp_path / "c.log")
    started = time.monotonic()
    with pytest.raises(ProcessError, match="exited with code 3") as info:
        proc.start()
    assert "bad config" in str(info.value)
    assert time.monotonic() - started < 5


def test_service_process_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = ServiceProcess("stubborn", [sys.executable, "-c", code], {}, health_url=None,
                          log_path=tmp_path / "s.log", stop_grace=0.5)
    proc.start()
    started = time.monotonic()
    assert proc.stop() == -9
    assert time.monotonic() - started < 5
