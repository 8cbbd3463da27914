"""Typed errors raised by keycast_tw.nostr.

Every error is a ``ValueError`` so callers that only know "bad input" can catch that, while the
engine can tell the cases apart. Messages are fixed short texts chosen by this package: they never
embed key material, connect secrets, plaintexts or decrypted request bodies, so they are safe to
log and to send back to a client.
"""

from __future__ import annotations


class NostrError(ValueError):
    """Base class of every error raised for bad Nostr input."""


class InvalidKey(NostrError):
    """A secret key is not a scalar in [1, n-1], or a public key is not on the curve."""


class InvalidEvent(NostrError):
    """An event has the wrong shape, a wrong id or a bad signature."""


class DecryptionError(NostrError):
    """A NIP-04 or NIP-44 payload cannot be decrypted.

    ``reason`` is a short fixed text ("invalid MAC", "invalid padding"...) that tests and metrics
    can match without parsing the message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"decryption failed: {reason}")
        self.reason = reason


class EncryptionError(NostrError):
    """A plaintext cannot be encrypted (empty, or over the configured maximum length)."""


class Bech32Error(NostrError):
    """A NIP-19 string is not valid bech32, has the wrong prefix or a malformed payload."""


class MalformedRequest(NostrError):
    """A NIP-46 message is not a valid request or response.

    ``request_id`` is set when the id could be read, so the engine can still reply with an error
    instead of letting the client time out.
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class InvalidURI(NostrError):
    """A bunker:// or nostrconnect:// URI cannot be parsed."""
