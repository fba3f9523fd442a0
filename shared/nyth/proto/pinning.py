"""Pinning a server's signed bundle (group server §4, mailbox): trust on first use, a
refusal that says what changed, and re-pinning bound to the exact bytes the user saw.

Works for any bundle type that is a frozen dataclass with a ``verify(data, onion)``
class method (`ServerBundle`, `MailboxBundle`). Sans-IO: callers fetch the bytes and
keep the pins; this module only decides.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

from nyth.errors import BundleChangedError, RepinMismatchError
from nyth.proto.identity import normalize_onion

BundleT = TypeVar("BundleT")
Verify = Callable[[bytes, str], BundleT]

# Keys are told apart by a prefix in a change list; the full bytes are bound by the hash.
_KEY_PREFIX_HEX = 16


def bundle_sha256(data: bytes) -> str:
    """The name a user reviews a bundle by and sends back to re-pin it (lowercase hex)."""
    return hashlib.sha256(data).hexdigest()


def bundle_limits(bundle: Any) -> dict[str, int]:
    """What a bundle promises, as numbers: every integer field but issued_at."""
    return {f.name: getattr(bundle, f.name) for f in fields(bundle)
            if f.name != "issued_at" and isinstance(getattr(bundle, f.name), int)}


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()[:_KEY_PREFIX_HEX] + "…"
    return str(value)


def bundle_changes(pinned: Any, presented: Any) -> tuple[str, ...]:
    """"field old -> new" for every field that differs; issued_at last, so the promises
    that changed come first (a re-issue alone still shows, as issued_at)."""
    names = sorted((f.name for f in fields(pinned)), key=lambda name: name == "issued_at")
    return tuple(f"{name} {_shown(getattr(pinned, name))} -> {_shown(getattr(presented, name))}"
                 for name in names if getattr(pinned, name) != getattr(presented, name))


def repin_command(onion: str) -> str:
    return f"nyth server repin {normalize_onion(onion)}"


def refusal(onion: str, changes: tuple[str, ...]) -> str:
    """What the user is told while a changed bundle is refused: what changed, what to run."""
    return (f"{normalize_onion(onion)}.onion presents a signed bundle that differs from the one "
            f"pinned on first use ({'; '.join(changes)}); refusing it until you review and "
            f"re-pin it: {repin_command(onion)}")


def check_pin(onion: str, presented: bytes, pinned: bytes | None,
              verify: Verify[BundleT]) -> BundleT:
    """Trust on first use: the verified presented bundle when nothing is pinned yet or it
    is byte-for-byte the pinned one; BundleChangedError naming the changes otherwise.
    A bundle that does not verify raises before any comparison."""
    bundle = verify(presented, onion)
    if pinned is not None and pinned != presented:
        changes = bundle_changes(verify(pinned, onion), bundle)
        raise BundleChangedError(refusal(onion, changes), changes)
    return bundle


def accept_reviewed(onion: str, presented: bytes, reviewed_sha256: str,
                    verify: Verify[BundleT]) -> BundleT:
    """The bundle to pin on a re-pin: presented must verify for onion (one that does not is
    never pinned) and be exactly the bytes the user reviewed, named by their SHA-256, so
    a server cannot swap in something else between the user's review and the re-pin."""
    bundle = verify(presented, onion)
    actual = bundle_sha256(presented)
    if not hmac.compare_digest(actual, reviewed_sha256.lower()):
        raise RepinMismatchError(
            f"{normalize_onion(onion)}.onion now presents bundle {actual}, not the one you "
            f"reviewed ({reviewed_sha256.lower()}); nothing was re-pinned")
    return bundle
