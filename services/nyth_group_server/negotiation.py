"""Which page format an `Accept` header asks for: JSON (the default) or binary pages.

RFC 9110 §12.5.1, reduced to the two types this server offers: each is given the q of
the most specific range that matches it (exact type, then `application/*`, then `*/*`;
the highest q where one is named twice);
the higher q wins, and a tie goes to JSON, so only a client that names the binary type
above JSON gets it (`*/*` and a missing header mean JSON, as before binary pages
existed). A range with a malformed q is ignored, as is one that is not a media range;
nothing acceptable (everything ignored, or q=0 for both) means 406.
"""

from __future__ import annotations

import re

from nyth.proto.blob_page import MEDIA_TYPE as BINARY

JSON = "application/json"
# Longer headers are refused rather than parsed: the two types fit in far less, and a
# request's parsing cost stays bounded whatever a client sends.
MAX_ACCEPT_CHARS = 1024
_QVALUE = re.compile(r"(0(\.[0-9]{0,3})?|1(\.0{0,3})?)")
_SPECIFICITY = {"*/*": 0, "application/*": 1}


class NotAcceptable(Exception):
    """The Accept header allows neither format; the text says why."""


def _q(params: list[str]) -> float | None:
    """The q parameter of a range (1 when absent); None when it is malformed."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else None
    return 1.0


def choose_page_type(accept: str | None) -> str:
    """JSON or BINARY for this Accept header; NotAcceptable if it allows neither."""
    if accept is None or not accept.strip():
        return JSON
    if len(accept) > MAX_ACCEPT_CHARS:
        raise NotAcceptable(f"Accept header longer than {MAX_ACCEPT_CHARS} characters")
    # (specificity, q) of the best-matching range for each type; -1: no range matched.
    best = {JSON: (-1, 0.0), BINARY: (-1, 0.0)}
    for media_range in accept.split(","):
        media, *params = media_range.split(";")
        media = media.strip().lower()
        q = _q(params)
        if q is None or media.count("/") != 1:
            continue
        for offered in best:
            specificity = 2 if media == offered else _SPECIFICITY.get(media, -1)
            # A type named twice at the same specificity takes its higher q: the order
            # of ranges in a header carries no meaning.
            if specificity >= 0 and (specificity, q) > best[offered]:
                best[offered] = (specificity, q)
    json_q, binary_q = best[JSON][1], best[BINARY][1]
    if binary_q > json_q:
        return BINARY
    if json_q > 0:
        return JSON
    raise NotAcceptable(f"pages are served as {JSON} or {BINARY}; the Accept header allows "
                        "neither")
