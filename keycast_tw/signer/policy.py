"""Policy decisions for sign, encrypt and decrypt requests: pure functions, no Twisted.

A policy is a set of permissions combined with AND; a policy that is None or has no permissions
allows everything. Each check returns None when the request is allowed, or the reason to send to
the client ("blocked by <identifier> policy"). The reason never contains request content.

Semantics (the Rust original's catalogue, with its bugs fixed):

- ``allowed_kinds`` ``{"allowed_kinds": [1, 7]}``: signing only those kinds; a missing or null list
  allows every kind. Encrypt and decrypt are not restricted.
- ``content_filter`` ``{"blocked_words": ["spam"]}``: refuses to sign an event, or to encrypt a
  plaintext, that contains a blocked word. Matching is a substring test on a normalised form (NFKC,
  default-ignorable and format characters removed, casefolded), so "SPAM", "ｓｐａｍ" and
  "sp<soft hyphen>am" are blocked too; the original was case-sensitive, which made the filter
  trivial to bypass. For signing, the content, every tag value (except 64-hex ids and pubkeys)
  and, when the content is JSON (kind 0 metadata, reposts), its decoded string values are
  checked, so a JSON escape such as ``\\u0073pam`` hides nothing. Empty words are ignored (they
  would otherwise block everything). Decrypt is allowed.
- ``encrypt_to_self``: encrypt and decrypt only with the USER's own pubkey as the third party (the
  original compared against the NIP-46 client's pubkey). Signing is allowed.
- ``decrypt_only``: signs only kind 22242 (NIP-42 relay AUTH), never encrypts, may decrypt.
- ``full_access``: allows everything.
- Any other identifier, or a malformed configuration, denies every guarded operation: a policy we
  do not understand must not silently grant more than the operator meant (fail closed).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Final

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


def check_sign(
    policy: Policy | None, kind: int, content: str, tags: Sequence[Sequence[str]] = ()
) -> str | None:
    """Why signing an event of ``kind`` with ``content`` and ``tags`` is refused, or None."""
    if policy is None:
        return None
    texts: tuple[str, ...] | _Invalid | None = None  # normalised once, when first needed
    for permission in policy.permissions:
        identifier = permission.identifier
        if identifier == ALLOWED_KINDS:
            kinds = _allowed_kinds(permission.config)
            if isinstance(kinds, _Invalid):
                return _invalid(identifier)
            if kinds is not None and kind not in kinds:
                return _blocked(identifier)
        elif identifier == CONTENT_FILTER:
            if texts is None:
                texts = _event_texts(kind, content, tags)
            reason = _content_check(permission, texts)
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
            reason = _content_check(permission, (_normalise(plaintext),))
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
    """The normalised non-empty blocked words, or None when the configuration is unreadable."""
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
        word = _normalise(word)
        if word:
            folded.append(word)
    return tuple(folded)


def _content_check(permission: Permission, texts: tuple[str, ...] | _Invalid) -> str | None:
    """Whether any normalised text contains a blocked word; texts we could not read (_INVALID)
    are refused when there is any word to look for."""
    words = _blocked_words(permission.config)
    if words is None:
        return _invalid(permission.identifier)
    if words:
        if isinstance(texts, _Invalid):
            return _blocked(permission.identifier)
        for text in texts:
            for word in words:
                if word in text:
                    return _blocked(permission.identifier)
    return None


#: Default_Ignorable_Code_Point (Unicode DerivedCoreProperties): invisible when rendered. Those
#: of category Cf are also caught by the category test, which covers the other format
#: characters (and ones a newer Unicode adds) through the running Python's database.
_DEFAULT_IGNORABLE: Final = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
#: A 64-hex tag value is an event id or a pubkey: clients show it as a reference, not as text,
#: and a short blocked word ("bad", "cafe") would match a random one by chance.
_HEX_ID: Final = re.compile(r"[0-9a-f]{64}")
#: Content that may be JSON worth decoding (besides kind 0): an object or an array.
_JSON_CONTAINER: Final = re.compile(r"[ \t\r\n]*[\[{]")


def _invisible(char: str) -> bool:
    code = ord(char)
    if unicodedata.category(char) == "Cf":
        return True
    return any(start <= code <= end for start, end in _DEFAULT_IGNORABLE)


def _normalise(text: str) -> str:
    """The form a reader perceives: compatibility forms folded (NFKC: full-width letters,
    ligatures), invisible characters (soft hyphen, zero-width space, bidi controls, variation
    selectors) removed, case folded. Blocked words and texts both go through it."""
    if text.isascii():
        return text.lower()  # NFKC changes no ASCII and ASCII has no format characters
    text = unicodedata.normalize("NFKC", text)
    invisible = {ord(char): None for char in set(text) if _invisible(char)}
    if invisible:
        text = text.translate(invisible)
    return unicodedata.normalize("NFKC", text.casefold())


def _event_texts(
    kind: int, content: str, tags: Sequence[Sequence[str]]
) -> tuple[str, ...] | _Invalid:
    """Every text of an event to sign that a client may show, normalised: the content, the tag
    values, and the string values of JSON content (which a client decodes, escapes and all).
    _INVALID when the JSON is too deeply nested to read: it cannot be checked."""
    texts = [content]
    texts.extend(value for tag in tags for value in tag[1:] if not _HEX_ID.fullmatch(value))
    if kind == 0 or _JSON_CONTAINER.match(content):
        strings = _json_strings(content)
        if isinstance(strings, _Invalid):
            return strings
        texts.extend(strings)
    return tuple(_normalise(text) for text in texts)


def _skip_number(text: str) -> None:
    return None


def _json_strings(content: str) -> list[str] | _Invalid:
    """The string values anywhere in ``content`` parsed as JSON; [] when it is not JSON.

    The stdlib parser, not orjson: like JavaScript's JSON.parse it accepts lone surrogate
    escapes, which would otherwise make the whole text unreadable here but not to clients.
    Numbers are not converted: Python refuses integers over 4300 digits, JavaScript does not.
    Keys are not included: a word like "name" would then block every profile.
    """
    try:
        value = json.loads(content, parse_int=_skip_number, parse_float=_skip_number)
    except RecursionError:
        return _INVALID
    except ValueError:
        return []
    strings: list[str] = []
    pending: list[object] = [value]
    while pending:  # iterative: the nesting depth is the sender's choice
        item = pending.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return strings


def _same_key(user_pubkey: str, third_party: str) -> bool:
    return user_pubkey.lower() == third_party.lower()


def _blocked(identifier: str) -> str:
    return f"blocked by {identifier} policy"


def _invalid(identifier: str) -> str:
    return f"blocked by {identifier} policy (invalid configuration)"


def _unknown(identifier: str) -> str:
    return f"blocked by {identifier[:64]} policy (unknown permission)"
