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
    """A server presented a key bundle different from the one pinned on first use."""
