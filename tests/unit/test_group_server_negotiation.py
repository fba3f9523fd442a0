"""How the group server reads an Accept header for GET /v1/blobs: JSON unless binary pages
are ranked above it, 406 when neither is allowed. The server answering accordingly is
tested on a real process in tests/integration/test_group_server_pages.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nyth_group_server.negotiation import (
    BINARY,
    JSON,
    MAX_ACCEPT_CHARS,
    NotAcceptable,
    choose_page_type,
)

PEER_ACCEPT = f"{BINARY}, {JSON};q=0.5"


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, JSON), ("", JSON), ("   ", JSON), ("*/*", JSON), ("application/*", JSON),
    (JSON, JSON), ("Application/JSON", JSON), (f"{JSON}; charset=utf-8", JSON),
    # A client naming both at the same rank gets the default.
    (f"{BINARY}, {JSON}", JSON), (f"{JSON}, {BINARY}", JSON), (f"{BINARY}, */*", JSON),
    (BINARY, BINARY), (BINARY.upper(), BINARY), (PEER_ACCEPT, BINARY),
    (f"{JSON};q=0.4, {BINARY};q=0.5", BINARY), (f"{BINARY};q=0.001", BINARY),
    (f"{BINARY};q=0.9, */*;q=1", JSON),
    # The most specific range decides: JSON is refused here although */* allows it.
    (f"{JSON};q=0, */*", BINARY), (f"*/*, {BINARY};q=0", JSON),
    # A range with a malformed q (or no media range at all) is ignored, not fatal.
    (f"{BINARY};q=2, {JSON}", JSON), (f"{BINARY};q=abc, {JSON};q=0.1", JSON),
    (f"{BINARY};q=nan, {JSON}", JSON), ("text/html, */*;q=0.1", JSON),
])
def test_chosen_types(accept: str | None, chosen: str) -> None:
    assert choose_page_type(accept) == chosen


@pytest.mark.parametrize("accept", [
    "text/html", "text/event-stream", "image/*", "application/xml", "foo", "*",
    f"{JSON};q=0", f"{BINARY};q=0, {JSON};q=0", "*/*;q=0", "application/*;q=0.0",
    f"{JSON};q=1.5", "application/octet-stream", ",,,", ";q=1",
])
def test_headers_allowing_neither_are_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="neither"):
        choose_page_type(accept)


def test_an_overlong_header_is_refused_unparsed() -> None:
    long = ", ".join(["text/html"] * 200) + f", {JSON}"
    assert len(long) > MAX_ACCEPT_CHARS
    with pytest.raises(NotAcceptable, match="longer than"):
        choose_page_type(long)


@given(st.text(max_size=300))
def test_any_header_gives_a_type_or_not_acceptable(accept: str) -> None:
    try:
        assert choose_page_type(accept) in (JSON, BINARY)
    except NotAcceptable:
        pass


@given(st.lists(st.sampled_from([JSON, BINARY, "*/*", "application/*", "text/plain"]),
                max_size=4),
       st.lists(st.sampled_from(["", ";q=0", ";q=0.3", ";q=1", ";q=0.999"]), min_size=4,
                max_size=4))
def test_binary_only_when_ranked_strictly_above_json(types: list[str], qs: list[str]) -> None:
    ranges = [t + q for t, q in zip(types, qs, strict=False)]
    try:
        chosen = choose_page_type(", ".join(ranges))
    except NotAcceptable:
        assert JSON + ";q=0" in ranges or JSON not in types
        return
    if chosen == BINARY:
        assert {BINARY, "*/*", "application/*"} & set(types)
    if JSON in ranges and BINARY not in types:  # JSON at q=1, binary by a wildcard at most
        assert chosen == JSON
