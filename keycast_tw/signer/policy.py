"""Policy decisions for sign, encrypt and decrypt requests: pure functions, no Twisted.

A policy is a set of permissions combined with AND; a policy that is None or has no permissions
allows everything. Each check returns None when the request is allowed, or the reason to send to
the client ("blocked by <identifier> policy"). The reason never contains request content.

Semantics (the Rust original's catalogue, with its bugs fixed):

- ``allowed_kinds`` ``{"allowed_kinds": [1, 7]}``: signing only those kinds; a missing or null list
  allows every kind. Encrypt and decrypt are not restricted.
- ``content_filter`` ``{"blocked_words": ["spam"]}``: refuses to sign content, or to encrypt a
  plaintext, that contains a blocked word. Matching is a case-insensitive substring test (casefold),
  so "SPAM" is blocked too; the original was case-sensitive, which made the filter trivial to
  bypass. Empty words are ignored (they would otherwise block everything). Decrypt is allowed.
- ``encrypt_to_self``: encrypt and decrypt only with the USER's own pubkey as the third party (the
  original compared against the NIP-46 client's pubkey). Signing is allowed.
- ``decrypt_only``: signs only kind 22242 (NIP-42 relay AUTH), never encrypts, may decrypt.
- ``full_access``: allows everything.
- Any other identifier, or a malformed configuration, denies every guarded operation: a policy we
  do not understand must not silently grant more than the operator meant (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping

from keycast_tw.signer.model import Permission, Policy

RELAY_AUTH_KIND = 22242

ALLOWED_KINDS = "allowed_kinds"
CONTENT_FILTER = "content_filter"
ENCRYPT_TO_SELF = "encrypt_to_self"
DECRYPT_ONLY = "decrypt_only"
FULL_ACCESS = "full_access"

KNOWN_PERMISSIONS = frozenset(
    {ALLOWED_KINDS, CONTENT_FILTER, ENCRYPT_TO_SELF, DECRYPT_ONLY, FULL_ACCESS}
)


def check_sign(policy: Policy | None, kind: int, content: str) -> str | None:
    """Why signing an event of ``kind`` with ``content`` is refused, or None when allowed."""
    if policy is None:
        return None
    for permission in policy.permissions:
        identifier = permission.identifier
        if identifier == ALLOWED_KINDS:
            kinds = _allowed_kinds(permission.config)
            if isinstance(kinds, _Invalid):
                return _invalid(identifier)
            if kinds is not None and kind not in kinds:
                return _blocked(identifier)
        elif identifier == CONTENT_FILTER:
            reason = _content_check(permission, content)
            if reason is not None:
                return reason
        elif identifier == DECRYPT_ONLY:
            if kind != RELAY_AUTH_KIND:
                return _blocked(identifier)
        elif identifier not in KNOWN_PERMISSIONS:
            return _unknown(identifier)
    return None


def check_encrypt(
    policy: Policy | None, plaintext: str, user_pubkey: str, third_party: str
) -> str | None:
    """Why encrypting ``plaintext`` from the user to ``third_party`` is refused, or None."""
    if policy is None:
        return None
    for permission in policy.permissions:
        identifier = permission.identifier
        if identifier == CONTENT_FILTER:
            reason = _content_check(permission, plaintext)
            if reason is not None:
                return reason
        elif identifier == ENCRYPT_TO_SELF:
            if not _same_key(user_pubkey, third_party):
                return _blocked(identifier)
        elif identifier == DECRYPT_ONLY:
            return _blocked(identifier)
        elif identifier == ALLOWED_KINDS:
            if isinstance(_allowed_kinds(permission.config), _Invalid):
                return _invalid(identifier)
        elif identifier not in KNOWN_PERMISSIONS:
            return _unknown(identifier)
    return None


def check_decrypt(policy: Policy | None, user_pubkey: str, third_party: str) -> str | None:
    """Why decrypting a message between the user and ``third_party`` is refused, or None."""
    if policy is None:
        return None
    for permission in policy.permissions:
        identifier = permission.identifier
        if identifier == ENCRYPT_TO_SELF:
            if not _same_key(user_pubkey, third_party):
                return _blocked(identifier)
        elif identifier == ALLOWED_KINDS:
            if isinstance(_allowed_kinds(permission.config), _Invalid):
                return _invalid(identifier)
        elif identifier == CONTENT_FILTER:
            if _blocked_words(permission.config) is None:
                return _invalid(identifier)
        elif identifier not in KNOWN_PERMISSIONS:
            return _unknown(identifier)
    return None


class _Invalid:
    """Marker for a configuration we cannot read."""


_INVALID = _Invalid()


def _allowed_kinds(config: object) -> frozenset[int] | _Invalid | None:
    """The kinds an ``allowed_kinds`` permission lists; None means all; _INVALID if unreadable.

    ``config`` comes from the database as JSON, so its type is checked, not trusted.
    """
    if not isinstance(config, Mapping):
        return _INVALID
    kinds = config.get("allowed_kinds")
    if kinds is None:
        return None
    if not isinstance(kinds, list | tuple):
        return _INVALID
    for kind in kinds:
        if not isinstance(kind, int) or isinstance(kind, bool):
            return _INVALID
    return frozenset(kinds)


def _blocked_words(config: object) -> tuple[str, ...] | None:
    """The casefolded non-empty blocked words, or None when the configuration is unreadable."""
    if not isinstance(config, Mapping):
        return None
    words = config.get("blocked_words", ())
    if words is None:
        return ()
    if not isinstance(words, list | tuple):
        return None
    folded = []
    for word in words:
        if not isinstance(word, str):
            return None
        if word:
            folded.append(word.casefold())
    return tuple(folded)


def _content_check(permission: Permission, text: str) -> str | None:
    words = _blocked_words(permission.config)
    if words is None:
        return _invalid(permission.identifier)
    if words:
        folded = text.casefold()
        for word in words:
            if word in folded:
                return _blocked(permission.identifier)
    return None


def _same_key(user_pubkey: str, third_party: str) -> bool:
    return user_pubkey.lower() == third_party.lower()


def _blocked(identifier: str) -> str:
    return f"blocked by {identifier} policy"


def _invalid(identifier: str) -> str:
    return f"blocked by {identifier} policy (invalid configuration)"


def _unknown(identifier: str) -> str:
    return f"blocked by {identifier[:64]} policy (unknown permission)"
