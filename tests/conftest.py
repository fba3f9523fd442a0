"""Test tiers: tests/unit (no network), tests/integration (real redis-server and a real
private Tor network as local processes), tests/e2e (docker compose)."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.tor_network",
    "tests.fixtures.stack",
]
