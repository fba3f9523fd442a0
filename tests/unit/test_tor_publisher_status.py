"""What OnionPublisher.wait_published says when it gives up: a caller that times out
between two retries (state "connecting", no reason of its own) still learns why the
publisher is retrying. Before, such a time-out said only "(connecting)", depending on
the moment it struck."""

from __future__ import annotations

import pytest
from nyth.proto.identity import Identity
from nyth.tor.endpoints import ControlEndpoint
from nyth.tor.publisher import OnionPublisher


def publisher() -> OnionPublisher:
    return OnionPublisher(ControlEndpoint("127.0.0.1", 9, "pw"), Identity.generate(),
                          virtual_port=80, target="127.0.0.1:1")


async def test_a_time_out_between_retries_names_the_last_failure() -> None:
    p = publisher()
    p._set_status("unreachable", "tor gateway control port 127.0.0.1:9 is not a tor control port")
    p._set_status("connecting", None)
    with pytest.raises(TimeoutError, match=r"\(connecting; last failure: .*is not a tor control port\)"):
        await p.wait_published(0.01)


async def test_a_time_out_during_a_failure_says_it_once_and_success_forgets_it() -> None:
    p = publisher()
    p._set_status("unreachable", "refused the connection")
    with pytest.raises(TimeoutError) as caught:
        await p.wait_published(0.01)
    assert str(caught.value).endswith("(unreachable: refused the connection)")
    p._set_status("published", None)
    p._set_status("connecting", None)   # lost the gateway: a new round, nothing failed yet
    with pytest.raises(TimeoutError) as caught:
        await p.wait_published(0.01)
    assert str(caught.value).endswith("(connecting)")
