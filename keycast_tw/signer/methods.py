"""The NIP-46 methods that need the user's secret key: sign_event and nip04/nip44 encrypt/decrypt.

Each function is pure (no shared state, no Twisted): the engine calls it through its crypto runner,
possibly on a worker thread, with everything it needs passed in. A request the signer will not
serve raises ``Refused`` with the reason to send back to the client; reasons never quote request
content, plaintexts or keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import orjson

from keycast_tw.nostr import nip04, nip44, nip46
from keycast_tw.nostr.errors import DecryptionError, EncryptionError, InvalidEvent, InvalidKey
from keycast_tw.nostr.event import (
    MAX_KIND,
    is_valid_created_at,
    is_valid_kind,
    is_valid_tags,
    sign_validated,
)
from keycast_tw.nostr.keys import SecretKey, parse_pubkey
from keycast_tw.signer.model import KeySource, Policy
from keycast_tw.signer.policy import check_decrypt, check_encrypt, check_sign


class Refused(Exception):
    """The request is understood and answered with an error reply carrying ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, repr=False)
class MethodResult:
    """The result string of a method, plus what the engine records or caches afterwards.

    ``derived_key`` is a conversation key (NIP-44) or shared x (NIP-04) computed for the third
    party because none was cached; the engine caches it on the reactor thread.
    """

    value: str
    event_kind: int | None = None
    event_id: str | None = None
    derived_key: bytes | None = None

    def __repr__(self) -> str:
        # The value may be a decrypted plaintext and derived_key is key material.
        return f"MethodResult(value=<{len(self.value)} chars>, event_kind={self.event_kind})"


def sign_event(
    params: tuple[str, ...],
    user: KeySource,
    policy: Policy | None,
    now: int,
    max_future: int,
    *,
    user_is_transport: bool = False,
) -> MethodResult:
    """Sign the template in params[0] with the user key; the result is the signed event's JSON.

    kind, content, tags and created_at are kept exactly as given (NDK reuses its own id and only
    takes ``sig``). A missing created_at becomes ``now``; one more than ``max_future`` seconds
    ahead is refused, because a far-future replaceable event (profile, contacts, relay list)
    would shadow every later update by the user, even after the client is revoked. Past dates
    are allowed (imports, re-publishing). A present pubkey must be the user's: silently signing
    as someone else than the client asked for hides client bugs. When the user key is also a
    bunker's transport key (a same-key authorization), a kind-24133 event signed with it would
    be a forged bunker reply to that bunker's clients, so that kind is refused.
    """
    if not params:
        raise Refused("sign_event: missing event template")
    try:
        template = orjson.loads(params[0])
    except orjson.JSONDecodeError:
        raise Refused("sign_event: params[0] must be a JSON event template") from None
    if not isinstance(template, dict):
        raise Refused("sign_event: params[0] must be a JSON object")
    kind = template.get("kind")
    if not is_valid_kind(kind):
        raise Refused(f"sign_event: kind must be an integer from 0 to {MAX_KIND}")
    if user_is_transport and kind == nip46.KIND:
        raise Refused("sign_event: kind 24133 with a key that is also a bunker transport key")
    content = template.get("content")
    if not isinstance(content, str):
        raise Refused("sign_event: content must be a string")
    tags = template.get("tags", [])
    if not is_valid_tags(tags):
        raise Refused("sign_event: tags must be an array of arrays of strings")
    created_at = template.get("created_at")
    if created_at is None:
        created_at = now
    elif type(created_at) is int and created_at > now + max_future:
        raise Refused("sign_event: created_at is too far in the future")
    elif not is_valid_created_at(created_at):
        raise Refused("sign_event: created_at must be a non-negative integer")
    pubkey = template.get("pubkey")
    if pubkey not in (None, "") and pubkey != user.pubkey:
        raise Refused("sign_event: pubkey is not the signer's user key")
    denial = check_sign(policy, kind, content, tags)
    if denial is not None:
        raise Refused(denial)
    try:
        # Every field was checked above, so the event module need not check them again.
        signed = sign_validated(
            user.secret_key(), kind=kind, content=content, tags=tags, created_at=created_at
        )
    except InvalidEvent:
        # A lone surrogate: JSON.stringify-compatible serialization has no form for it.
        raise Refused("sign_event: the event cannot be serialized") from None
    return MethodResult(orjson.dumps(signed).decode(), event_kind=kind, event_id=signed["id"])


_Derive = Callable[[SecretKey, bytes], bytes]
_Cipher = Callable[[str, bytes], str]

#: per scheme: how to derive the key with a peer, encrypt, decrypt.
_SCHEMES: Final[Mapping[str, tuple[_Derive, _Cipher, _Cipher]]] = {
    "nip44": (nip44.conversation_key, nip44.encrypt, nip44.decrypt),
    "nip04": (SecretKey.shared_x, nip04.encrypt_with_key, nip04.decrypt_with_key),
}
THIRD_PARTY_METHODS: Final = frozenset(
    f"{scheme}_{direction}" for scheme in _SCHEMES for direction in ("encrypt", "decrypt")
)


def third_party_crypto(
    method: str,
    params: tuple[str, ...],
    user: KeySource,
    policy: Policy | None,
    cached: bytes | None,
) -> MethodResult:
    """nip04/nip44 encrypt/decrypt of params[1] between the user and the third party params[0].

    ``cached`` is the key already derived for (user, third party), if any; a key derived here is
    returned in ``derived_key`` for the engine to cache. A decryption to the empty string is
    refused with "<method>: empty plaintext" (see below).
    """
    scheme, _, direction = method.partition("_")
    derive, encrypt, decrypt = _SCHEMES[scheme]
    if len(params) < 2:
        raise Refused(f"{method}: expected [third_party_pubkey, text]")
    third_party, text = params[0], params[1]
    try:
        peer = parse_pubkey(third_party)
    except InvalidKey:
        raise Refused(f"{method}: params[0] must be a hex public key") from None
    encrypting = direction == "encrypt"
    if encrypting:
        denial = check_encrypt(policy, text, user.pubkey, third_party)
    else:
        denial = check_decrypt(policy, user.pubkey, third_party)
    if denial is not None:
        raise Refused(denial)
    key = cached if cached is not None else derive(user.secret_key(), peer)
    try:
        value = encrypt(text, key) if encrypting else decrypt(text, key)
    except DecryptionError as error:
        raise Refused(f"{method}: {error.reason}") from None
    except EncryptionError as error:
        raise Refused(f"{method}: {error}") from None
    if not value:
        # Only a NIP-04 message can decrypt to "" (NIP-44 has no empty plaintexts). nostr-tools
        # resolves only a non-empty result, so "" would leave its request pending forever; an
        # error reply ends it everywhere.
        raise Refused(f"{method}: empty plaintext")
    return MethodResult(value, derived_key=None if cached is not None else key)
