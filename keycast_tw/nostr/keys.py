"""secp256k1 keys for Nostr: BIP-340 schnorr signatures and raw-x ECDH.

Why the private ``coincurve._libsecp256k1`` module: coincurve's public API cannot do what a busy
signer needs.

- ``PrivateKey.sign_schnorr`` re-derives the keypair and verifies its own signature on every
  call (about 77 µs against 20 µs for ``secp256k1_schnorrsig_sign32`` with a cached keypair).
- ``PrivateKey.ecdh`` returns sha256 of the shared point, but NIP-04 and NIP-44 need the raw x
  coordinate; the public alternative, ``PublicKey.multiply``, is a variable-time scalar
  multiplication on the secret. ``secp256k1_ecdh`` with a hash callback that copies x is
  constant time.

The cffi module is stable within a coincurve major version, so setup.py pins ``coincurve<22``.

Thread safety: the module owns one libsecp256k1 context, randomized once at import and never
mutated afterwards; libsecp256k1 allows concurrent signing, verification and ECDH on such a
context. A ``SecretKey`` only holds immutable data after construction, so one instance may be
used from several crypto threads at once. cffi releases the GIL around each libsecp256k1 call.

Signatures are not verified after signing. BIP-340 suggests that as a fault-attack
countermeasure; it costs a verification (about 35 µs) per signature, and the keys live in a
software process where glitching is not the threat model.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

from coincurve._libsecp256k1 import ffi, lib
from coincurve.flags import CONTEXT_NONE

from keycast_tw.nostr.errors import InvalidKey, NostrError

__all__ = [
    "SecretKey",
    "ecdh_x",
    "generate_private_key",
    "parse_pubkey",
    "public_key_hex",
    "schnorr_sign",
    "schnorr_verify",
]

_CTX: Final[Any] = ffi.gc(lib.secp256k1_context_create(CONTEXT_NONE), lib.secp256k1_context_destroy)
if lib.secp256k1_context_randomize(_CTX, os.urandom(32)) != 1:  # pragma: no cover - libsecp bug
    raise RuntimeError("secp256k1_context_randomize failed")

_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


def _copy_x(output: Any, x32: Any, y32: Any, data: Any) -> int:
    """ECDH "hash" that keeps the unhashed x coordinate, as NIP-04 and NIP-44 require."""
    ffi.memmove(output, x32, 32)
    return 1


# Kept in a module global: cffi frees a callback's trampoline when the object is collected.
_COPY_X: Final[Any] = ffi.callback(
    "int(unsigned char *, const unsigned char *, const unsigned char *, void *)", _copy_x
)


def _check_bytes32(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidKey(f"{what} must be 32 bytes")
    return value


def _parse_ec_pubkey(pubkey: bytes) -> Any:
    """Lift an x-only key to the even-y point that ECDH takes; InvalidKey when off the curve."""
    _check_bytes32(pubkey, "public key")
    point = ffi.new("secp256k1_pubkey *")
    if lib.secp256k1_ec_pubkey_parse(_CTX, point, b"\x02" + pubkey, 33) != 1:
        raise InvalidKey("public key is not a valid x coordinate")
    return point


def _parse_xonly(pubkey: bytes) -> Any:
    """Parse an x-only key for schnorr verification; None when it is not on the curve."""
    point = ffi.new("secp256k1_xonly_pubkey *")
    if lib.secp256k1_xonly_pubkey_parse(_CTX, point, pubkey) != 1:
        return None
    return point


def _ecdh(secret: bytes, point: Any) -> bytes:
    out = ffi.new("unsigned char[32]")
    if lib.secp256k1_ecdh(_CTX, out, point, secret, _COPY_X, ffi.NULL) != 1:
        raise InvalidKey("secret key out of range")
    return bytes(ffi.buffer(out, 32))


class SecretKey:
    """A validated secret key with its libsecp256k1 keypair derived once and cached.

    The keypair (secret plus public point) is what ``secp256k1_schnorrsig_sign32`` needs; deriving
    it costs about 19 µs, as much as the signature itself, so it is done at construction only.
    The secret never appears in ``repr``/``str``; ``to_bytes`` exists for encryption at rest.
    """

    __slots__ = ("_keypair", "_secret", "pubkey", "pubkey_hex")

    pubkey: bytes
    pubkey_hex: str

    def __init__(self, privkey: bytes) -> None:
        secret = _check_bytes32(privkey, "secret key")
        keypair = ffi.new("secp256k1_keypair *")
        if lib.secp256k1_keypair_create(_CTX, keypair, secret) != 1:
            raise InvalidKey("secret key out of range")
        xonly = ffi.new("secp256k1_xonly_pubkey *")
        lib.secp256k1_keypair_xonly_pub(_CTX, xonly, ffi.NULL, keypair)
        out = ffi.new("unsigned char[32]")
        lib.secp256k1_xonly_pubkey_serialize(_CTX, out, xonly)
        self._secret = secret
        self._keypair = keypair
        self.pubkey = bytes(ffi.buffer(out, 32))
        self.pubkey_hex = self.pubkey.hex()

    @classmethod
    def generate(cls) -> SecretKey:
        """A fresh random key from the OS CSPRNG."""
        return cls(generate_private_key())

    @classmethod
    def from_hex(cls, privkey_hex: str) -> SecretKey:
        """Parse 64 hex characters (either case)."""
        if not isinstance(privkey_hex, str) or not _HEX64.fullmatch(privkey_hex):
            raise InvalidKey("secret key must be 64 hex characters")
        return cls(bytes.fromhex(privkey_hex))

    def sign(self, msg32: bytes, aux32: bytes | None = None) -> bytes:
        """BIP-340 signature of a 32-byte message with 32 fresh random aux bytes.

        ``aux32`` is only for reproducing published vectors; production callers leave it out.
        """
        if not isinstance(msg32, bytes) or len(msg32) != 32:
            raise NostrError("message to sign must be 32 bytes")
        if aux32 is None:
            aux32 = os.urandom(32)
        elif not isinstance(aux32, bytes) or len(aux32) != 32:
            raise NostrError("aux randomness must be 32 bytes")
        sig = ffi.new("unsigned char[64]")
        lib.secp256k1_schnorrsig_sign32(_CTX, sig, msg32, self._keypair, aux32)
        return bytes(ffi.buffer(sig, 64))

    def shared_x(self, pubkey: bytes) -> bytes:
        """Constant-time ECDH with an x-only public key: the unhashed 32-byte x coordinate."""
        return _ecdh(self._secret, _parse_ec_pubkey(pubkey))

    def to_bytes(self) -> bytes:
        """The raw 32-byte secret; only for encrypting it at rest."""
        return self._secret

    def __repr__(self) -> str:
        return f"SecretKey(pubkey={self.pubkey_hex[:8]}…)"

    __str__ = __repr__


def generate_private_key() -> bytes:
    """32 random bytes that form a valid scalar in [1, n-1]."""
    while True:
        candidate = os.urandom(32)
        if lib.secp256k1_ec_seckey_verify(_CTX, candidate) == 1:
            return candidate


def public_key_hex(privkey: bytes) -> str:
    """The x-only public key of a secret key, lowercase hex."""
    return SecretKey(privkey).pubkey_hex


def schnorr_sign(msg32: bytes, privkey: bytes, aux32: bytes | None = None) -> bytes:
    """One-off BIP-340 signature; long-lived signers should keep a ``SecretKey`` instead."""
    return SecretKey(privkey).sign(msg32, aux32)


def schnorr_verify(msg32: bytes, pubkey: bytes, sig: bytes) -> bool:
    """True when ``sig`` is a valid BIP-340 signature of the 32-byte ``msg32``; never raises.

    Nostr only ever signs 32-byte event ids, so other message lengths are rejected (False).
    """
    if not (
        isinstance(msg32, bytes)
        and isinstance(pubkey, bytes)
        and isinstance(sig, bytes)
        and len(msg32) == 32
        and len(pubkey) == 32
        and len(sig) == 64
    ):
        return False
    point = _parse_xonly(pubkey)
    if point is None:
        return False
    return bool(lib.secp256k1_schnorrsig_verify(_CTX, sig, msg32, 32, point) == 1)


def ecdh_x(privkey: bytes, pubkey: bytes) -> bytes:
    """Constant-time ECDH returning the unhashed x coordinate (32 bytes).

    ``pubkey`` is a 32-byte x-only key, lifted to the even-y point; the x coordinate of the
    product does not depend on that choice.
    """
    point = _parse_ec_pubkey(pubkey)
    return _ecdh(_check_bytes32(privkey, "secret key"), point)


def parse_pubkey(hex_or_bytes: str | bytes) -> bytes:
    """Validate an x-only public key (64 hex characters or 32 bytes) that lies on the curve."""
    if isinstance(hex_or_bytes, str):
        if not _HEX64.fullmatch(hex_or_bytes):
            raise InvalidKey("public key must be 64 hex characters")
        raw = bytes.fromhex(hex_or_bytes)
    else:
        raw = _check_bytes32(hex_or_bytes, "public key")
    if _parse_xonly(raw) is None:
        raise InvalidKey("public key is not a valid x coordinate")
    return raw
