"""NIP-01 events as plain dicts: canonical serialization, ids, signing and verification.

The id preimage must be byte-identical to JavaScript's
``JSON.stringify([0, pubkey, created_at, kind, tags, content])``, because that is what every
other Nostr implementation hashes. ``orjson.dumps`` produces exactly that (no whitespace,
non-ASCII verbatim, the seven short escapes, ``\\u00XX`` for other control characters) and is
twenty times faster than ``json.dumps``. Lone surrogates have no UTF-8 form; orjson refuses them
and so do we.

Every field that comes from outside is shape-checked before it is hashed: a ``bool`` is an
``int`` in Python but not a number in JSON, and a float ``created_at`` would serialize as
``1.0``. ``sign_validated`` skips that check for fields the caller has checked or built itself.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeGuard

import orjson

from keycast_tw.nostr.errors import InvalidEvent
from keycast_tw.nostr.keys import SecretKey, schnorr_verify

__all__ = [
    "MAX_KIND",
    "check_event",
    "event_id",
    "is_valid_created_at",
    "is_valid_kind",
    "is_valid_tags",
    "serialize",
    "sign_event",
    "sign_validated",
    "validate_shape",
    "verify_event",
]

MAX_KIND: Final = 65535
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX128: Final = re.compile(r"[0-9a-f]{128}")
# Integers JavaScript represents exactly; beyond this JSON.stringify would print something else.
_MAX_SAFE_INTEGER: Final = 2**53 - 1
_SEQUENCES: Final = (list, tuple)


def is_valid_kind(kind: object) -> TypeGuard[int]:
    """An int (not a bool) in 0..65535."""
    return isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind <= MAX_KIND


def is_valid_created_at(created_at: object) -> TypeGuard[int]:
    """An int (not a bool) in 0..2^53-1, the integers JSON.stringify prints exactly."""
    return (
        isinstance(created_at, int)
        and not isinstance(created_at, bool)
        and 0 <= created_at <= _MAX_SAFE_INTEGER
    )


def is_valid_tags(tags: object) -> TypeGuard[Sequence[Sequence[str]]]:
    """A list of lists of strings (tuples accepted for callers that build events in Python)."""
    # Plain loops: this runs on every request, and nested all() generators cost twice as much.
    if not isinstance(tags, _SEQUENCES):
        return False
    for tag in tags:
        if not isinstance(tag, _SEQUENCES):
            return False
        for item in tag:
            if not isinstance(item, str):
                return False
    return True


def _check_fields(event: Mapping[str, Any]) -> None:
    """Check the five fields that make up the id preimage."""
    pubkey = event.get("pubkey")
    if not isinstance(pubkey, str) or not _HEX64.fullmatch(pubkey):
        raise InvalidEvent("pubkey must be 64 lowercase hex characters")
    if not is_valid_created_at(event.get("created_at")):
        raise InvalidEvent("created_at must be a non-negative integer")
    if not is_valid_kind(event.get("kind")):
        raise InvalidEvent("kind must be an integer in 0..65535")
    if not is_valid_tags(event.get("tags")):
        raise InvalidEvent("tags must be a list of lists of strings")
    if not isinstance(event.get("content"), str):
        raise InvalidEvent("content must be a string")


def _serialize_checked(event: Mapping[str, Any]) -> bytes:
    """Serialize an event whose fields were checked; only lone surrogates can still fail."""
    try:
        fields = (event["pubkey"], event["created_at"], event["kind"], event["tags"])
        return orjson.dumps([0, *fields, event["content"]])
    except orjson.JSONEncodeError:
        raise InvalidEvent("event strings must be valid Unicode (no lone surrogates)") from None


def serialize(event: Mapping[str, Any]) -> bytes:
    """The UTF-8 id preimage ``[0,pubkey,created_at,kind,tags,content]``, as JSON.stringify."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("event must be a JSON object")
    _check_fields(event)
    return _serialize_checked(event)


def event_id(event: Mapping[str, Any]) -> str:
    """The lowercase hex sha256 of the canonical serialization."""
    return hashlib.sha256(serialize(event)).hexdigest()


def validate_shape(event: object) -> Mapping[str, Any]:
    """Check every NIP-01 field's type and format without the cryptography; return the event."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("event must be a JSON object")
    event_hex = event.get("id")
    if not isinstance(event_hex, str) or not _HEX64.fullmatch(event_hex):
        raise InvalidEvent("id must be 64 lowercase hex characters")
    sig = event.get("sig")
    if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
        raise InvalidEvent("sig must be 128 lowercase hex characters")
    _check_fields(event)
    return event


def check_event(event: object) -> None:
    """Raise InvalidEvent unless the shape, the id and the signature are all valid."""
    event = validate_shape(event)
    digest = hashlib.sha256(_serialize_checked(event)).digest()
    if digest.hex() != event["id"]:
        raise InvalidEvent("id does not match the event content")
    if not schnorr_verify(digest, bytes.fromhex(event["pubkey"]), bytes.fromhex(event["sig"])):
        raise InvalidEvent("invalid signature")


def verify_event(event: object) -> bool:
    """True when the event is well formed, its id matches and its signature verifies."""
    try:
        check_event(event)
    except InvalidEvent:
        return False
    return True


def sign_event(
    template: Mapping[str, Any],
    privkey: bytes | SecretKey,
    *,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Sign a template ``{kind, content, tags[, created_at]}`` and return the full event.

    ``kind``, ``content``, ``tags`` and ``created_at`` are kept exactly as given (NDK keeps its own
    id and takes only ``sig`` from a remote signer, so changing any of them would break it);
    ``pubkey``, ``id`` and ``sig`` from the template are replaced. A missing or null
    ``created_at`` becomes ``now()``. Every field is checked: this is the entry point for
    templates from outside.
    """
    if not isinstance(template, Mapping):
        raise InvalidEvent("event template must be a JSON object")
    for field in ("kind", "content", "tags"):
        if field not in template:
            raise InvalidEvent(f"event template is missing {field}")
    key = privkey if isinstance(privkey, SecretKey) else SecretKey(privkey)
    created_at = template.get("created_at")
    if created_at is None:
        created_at = int(now())
    event = _unsigned(key, created_at, template["kind"], template["tags"], template["content"])
    _check_fields(event)
    return _sign(event, key)


def sign_validated(
    key: SecretKey, *, kind: int, content: str, tags: Sequence[Sequence[str]], created_at: int
) -> dict[str, Any]:
    """Sign fields that are already known to be valid, without checking their shape again.

    For the engine's two signatures per request: the user's event, whose template the
    sign_event method has already checked field by field with the ``is_valid_*`` predicates
    (to tell the client which field is wrong), and the response event, which the engine builds
    itself. Checking them again here would run the shape check three times per request
    instead of once. Input from outside goes through ``sign_event``. Lone surrogates still raise
    InvalidEvent: they only show up when serializing.
    """
    return _sign(_unsigned(key, created_at, kind, tags, content), key)


def _unsigned(
    key: SecretKey, created_at: object, kind: object, tags: object, content: object
) -> dict[str, Any]:
    """The event without id and sig, in the field order every signed event is returned in."""
    return {
        "pubkey": key.pubkey_hex,
        "created_at": created_at,
        "kind": kind,
        "tags": tags,
        "content": content,
    }


def _sign(event: dict[str, Any], key: SecretKey) -> dict[str, Any]:
    """Add ``id`` and ``sig`` to a checked unsigned event."""
    digest = hashlib.sha256(_serialize_checked(event)).digest()
    event["id"] = digest.hex()
    event["sig"] = key.sign(digest).hex()
    return event
