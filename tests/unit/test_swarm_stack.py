"""docker-compose.yml as a Swarm stack (scripts/swarm_stack.py) with infra/swarm/stack.yml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.swarm_stack import dns_options, stack_from_compose

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "infra" / "swarm" / "stack.yml"


def _stack() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    override = yaml.safe_load(OVERRIDE.read_text())
    return stack_from_compose(compose, override["x-swarm-unset"], override["x-swarm-drop"])


def test_the_stack_keeps_the_servers_and_drops_what_swarm_cannot_take() -> None:
    services = _stack()["services"]
    assert "secrets" not in services and "alice" not in services and "bob" not in services
    assert {"tor-network", "tor-gateway", "redis", "group-server", "mailbox",
            "discovery"} <= set(services)
    for name, service in services.items():
        assert "depends_on" not in service, name
        assert "tmpfs" not in service, name
        assert not any(str(v).startswith("secret-") for v in service.get("volumes", [])), name
        assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"], name
    # The replicas publish through Onionbalance and reach Redis through Sentinel.
    env = services["group-server"]["environment"]
    assert "NYTH_TOR_CONTROL" not in env and "NYTH_REDIS_URL" not in env
    assert env["NYTH_TOR_SOCKS"] == "tor-gateway:9050"  # adverts still go through tor


def test_only_used_volumes_and_networks_remain() -> None:
    stack = _stack()
    assert not any(name.startswith("secret-") for name in stack["volumes"])
    assert "alice-data" not in stack["volumes"] and "api" not in stack["networks"]
    assert {"tor", "storage"} <= set(stack["networks"])


def test_published_ports_become_host_mode_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYTH_X_PORT", "9123")
    compose = {"services": {"x": {"ports": ["127.0.0.1:${NYTH_X_PORT:-8701}:8700",
                                            "${NYTH_Y_PORT:-8702}:8700"]}}}
    ports = stack_from_compose(compose, {}, [])["services"]["x"]["ports"]
    assert ports == [{"target": 8700, "published": 9123, "protocol": "tcp", "mode": "host"},
                     {"target": 8700, "published": 8702, "protocol": "tcp", "mode": "host"}]


def test_redis_and_its_sentinels_get_fast_failing_lookups_sentinels_first() -> None:
    """A stack file cannot carry resolver options; scripts/swarm sets these after a deploy.
    Every Redis-side service of the stack needs one (a missing name must fail at once)."""
    override = yaml.safe_load(OVERRIDE.read_text())
    options = dns_options(override)
    assert options == [("redis-sentinel", "ndots:0"), ("redis-replica", "ndots:0"),
                       ("redis", "ndots:0")]
    assert {service for service, _ in options} <= set(override["services"])
    assert dns_options({}) == []


def test_every_secret_the_override_mounts_is_declared() -> None:
    override = yaml.safe_load(OVERRIDE.read_text())
    declared = set(override["secrets"])
    used = {ref["source"] for service in override["services"].values()
            for ref in service.get("secrets", [])}
    assert used == declared


@pytest.mark.parametrize("which", ["base", "override"])
def test_both_files_match_the_compose_spec(which: str, tmp_path: Path) -> None:
    path = OVERRIDE
    if which == "base":
        path = tmp_path / "stack.yml"
        path.write_text(yaml.safe_dump(_stack()))
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is a pinned test dependency"
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
