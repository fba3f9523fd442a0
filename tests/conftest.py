"""Test tiers: tests/unit (no network), tests/integration (real redis-server and a real
private Tor network as local processes), tests/e2e (docker compose)."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.tor_network",
    "tests.fixtures.stack",
    "tests.fixtures.sse",
    "tests.fixtures.browser",
    "tests.fixtures.env",
]

TIERS = ("unit", "integration", "e2e")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Cheapest tier first, so a broken unit fails in seconds, and the compose stack (a
    session fixture) is not left running beside the integration tests. A stable sort:
    the shuffled order within each tier (pytest-randomly) is kept."""
    def tier(item: pytest.Item) -> int:
        parts = item.path.relative_to(item.config.rootpath).parts   # tests/<tier>/…
        return TIERS.index(parts[1]) if len(parts) > 2 and parts[1] in TIERS else len(TIERS)

    items.sort(key=tier)
