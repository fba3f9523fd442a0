"""The gateway told where to listen by a network instead of a name (the Swarm stack)."""

from __future__ import annotations

import pytest
from nyth.config import ConfigError
from nyth.tor.container import own_address_in


def test_the_own_address_in_a_network_is_found() -> None:
    # Loopback is the one network every test host surely has an address in.
    assert own_address_in("127.0.0.0/8") == "127.0.0.1"


def test_a_network_without_an_own_address_is_refused() -> None:
    # TEST-NET-2: documentation only (this machine's own interface is on TEST-NET-1).
    with pytest.raises(ConfigError, match=r"no address in 198\.51\.100\.0/24|no route into"):
        own_address_in("198.51.100.0/24")


def test_a_malformed_network_is_refused() -> None:
    with pytest.raises(ConfigError, match="NYTH_TOR_LISTEN_HOST"):
        own_address_in("10.0.0.0/99")
