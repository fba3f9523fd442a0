"""Error types shared by every layer.

Every decoder raises DecodeError (a ValueError) with a message that says what was wrong,
so boundaries (HTTP, packets, files) can turn it into a clear 4xx / a dropped frame.
"""


class NythError(Exception):
    """Base class of every error this project raises on purpose."""


class DecodeError(NythError, ValueError):
    """Input was malformed: wrong size, bad field, bad encoding."""


class AuthenticationError(NythError):
    """A MAC, signature or handshake proof did not verify."""


class ProtocolError(NythError):
    """The peer broke the protocol's state machine (wrong message at the wrong time)."""


class BundleChangedError(NythError):
    """A server presented a key bundle different from the one pinned on first use.

    changes says what differs, one "field old -> new" each, so the refusal can be shown
    to the user as a decision to make rather than an opaque failure.
    """

    def __init__(self, message: str, changes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.changes = changes


class RepinMismatchError(NythError):
    """A re-pin named a bundle (by its hash) other than the one the server presents now."""
