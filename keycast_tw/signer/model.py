"""The values the NIP-46 engine decides on: authorizations, their keys, policies and sessions.

These are shared between the engine (which reads them per request), the in-memory registry (which
indexes them by bunker pubkey) and the store (which builds them from SQLite rows and updates them
on reload). They are deliberately small: a daemon may hold a million of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from keycast_tw.nostr.keys import SecretKey

REGULAR = "regular"
OAUTH = "oauth"


class KeySource(Protocol):
    """A secret key the engine may use, decrypted lazily on first use and then cached.

    The store's implementation keeps the encrypted blob and decrypts it on the first request, so
    loading a million authorizations costs no key derivation. ``secret_key`` may be called from
    a crypto thread: implementations must be idempotent (a racing double decrypt is harmless).
    """

    @property
    def pubkey(self) -> str:
        """The x-only public key, lowercase hex (known without decrypting)."""

    def secret_key(self) -> SecretKey:
        """Return the usable secret key; raises KeyUnavailable when it cannot be decrypted."""


class KeyUnavailable(Exception):
    """A stored key cannot be decrypted (wrong master key, corrupt row); carries no key material."""


class PlainKey:
    """A KeySource over a key already in memory (tests, the in-memory store, fresh keys)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: SecretKey) -> None:
        self._secret = secret

    @property
    def pubkey(self) -> str:
        return self._secret.pubkey_hex

    def secret_key(self) -> SecretKey:
        return self._secret

    def __repr__(self) -> str:
        return f"PlainKey(pubkey={self._secret.pubkey_hex[:8]}…)"


class LazyKey:
    """A KeySource that decrypts on first use through an injected function, then caches.

    ``decrypt`` gets no arguments and returns the 32 raw secret bytes; the store closes over the
    ciphertext and its associated data. Errors become KeyUnavailable and are not cached, so a
    transient failure (e.g. a KMS hiccup during start) can succeed on the next request.
    """

    __slots__ = ("_pubkey", "_decrypt", "_secret")

    def __init__(self, pubkey: str, decrypt: Callable[[], bytes]) -> None:
        self._pubkey = pubkey
        self._decrypt = decrypt
        self._secret: SecretKey | None = None

    @property
    def pubkey(self) -> str:
        return self._pubkey

    def secret_key(self) -> SecretKey:
        secret = self._secret
        if secret is None:
            try:
                secret = SecretKey(self._decrypt())
            except Exception as error:
                raise KeyUnavailable(f"key {self._pubkey[:8]} cannot be decrypted") from error
            if secret.pubkey_hex != self._pubkey:
                raise KeyUnavailable(f"key {self._pubkey[:8]} does not match its stored pubkey")
            self._secret = secret
        return secret

    def __repr__(self) -> str:
        return f"LazyKey(pubkey={self._pubkey[:8]}…)"


@dataclass(frozen=True, slots=True)
class Permission:
    """One permission of a policy: an identifier of keycast's catalogue and its JSON config.

    Identifiers (the Rust original's, reference §4.8): ``allowed_kinds`` ({"allowed_kinds": [..]}),
    ``content_filter`` ({"blocked_words": [..]}), ``encrypt_to_self``, ``decrypt_only``,
    ``full_access``.
    """

    identifier: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of permissions, combined with AND. No permissions means allow all."""

    name: str
    permissions: tuple[Permission, ...] = ()


class Authorization:
    """One bunker: a bunker (transport) key serving a user key for the clients that connect.

    ``sessions`` maps each client pubkey that ever redeemed the connect secret to whether its
    session is active (False after ``logout``). It is None while empty, to keep unconnected
    authorizations small. Mutated only on the reactor thread.
    """

    __slots__ = (
        "id",
        "kind",
        "bunker_key",
        "user_key",
        "secret_hash",
        "relays",
        "policy",
        "max_uses",
        "expires_at",
        "revoked_at",
        "label",
        "sessions",
    )

    def __init__(
        self,
        *,
        id: int,
        bunker_key: KeySource,
        user_key: KeySource,
        secret_hash: bytes | None,
        relays: tuple[str, ...] = (),
        policy: Policy | None = None,
        kind: str = REGULAR,
        max_uses: int | None = 1,
        expires_at: int | None = None,
        revoked_at: int | None = None,
        label: str | None = None,
        sessions: dict[str, bool] | None = None,
    ) -> None:
        self.id = id
        self.kind = kind
        self.bunker_key = bunker_key
        self.user_key = user_key
        self.secret_hash = secret_hash
        self.relays = relays
        self.policy = policy
        self.max_uses = max_uses
        self.expires_at = expires_at
        self.revoked_at = revoked_at
        self.label = label
        self.sessions = sessions

    @property
    def bunker_pubkey(self) -> str:
        return self.bunker_key.pubkey

    @property
    def user_pubkey(self) -> str:
        return self.user_key.pubkey

    def is_live(self, now: float) -> bool:
        """Neither revoked nor expired at ``now`` (unix seconds)."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def __repr__(self) -> str:
        return f"Authorization(id={self.id}, bunker={self.bunker_pubkey[:8]}…, kind={self.kind})"


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One handled request, for the activity log. Never holds content, plaintext or secrets."""

    authorization_id: int
    client_pubkey: str
    method: str
    outcome: str  # "ok" or "error"
    created_at: int
    event_kind: int | None = None
    event_id: str | None = None
    error: str | None = None
