"""Connect secrets: made once per bunker:// URI, stored only hashed, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

_DOMAIN = b"keycast-tw connect secret v1\x00"


def generate_connect_secret() -> str:
    """A fresh 192-bit secret in the alphabet nostr-tools' BUNKER_REGEX accepts ([A-Za-z0-9_-])."""
    return secrets.token_urlsafe(24)


def hash_connect_secret(secret: str) -> bytes:
    """The stored form of a connect secret. Secrets are high-entropy, so a plain hash suffices."""
    return hashlib.sha256(_DOMAIN + secret.encode("utf-8")).digest()


def connect_secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time check of a presented secret against its stored hash."""
    return hmac.compare_digest(hash_connect_secret(secret), stored_hash)
