"""NIP-04 legacy encryption: AES-256-CBC keyed with the unhashed ECDH x coordinate.

Deprecated by NIP-44 but still sent by older NDK and nsecbunkerd-era clients, so the bunker must
decrypt it and answer in kind. The wire form is ``base64(ciphertext) + "?iv=" + base64(iv)``.
CBC has no integrity check: a wrong key usually shows up as bad PKCS#7 padding or invalid UTF-8,
both reported as DecryptionError without echoing any of the recovered bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Final

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keycast_tw.nostr.errors import DecryptionError, EncryptionError
from keycast_tw.nostr.keys import SecretKey, ecdh_x, parse_pubkey

__all__ = ["MAX_PAYLOAD", "decrypt", "decrypt_with_key", "encrypt", "encrypt_with_key", "is_nip04"]

MAX_PAYLOAD: Final = 4 * 1024 * 1024
_SEPARATOR: Final = "?iv="


def is_nip04(content: str) -> bool:
    """True for a NIP-04 payload: only they contain ``?iv=`` (NIP-44 is pure base64)."""
    return _SEPARATOR in content


def _shared_x(privkey_hex: str, pubkey_hex: str) -> bytes:
    return ecdh_x(SecretKey.from_hex(privkey_hex).to_bytes(), parse_pubkey(pubkey_hex))


def encrypt_with_key(plaintext: str, shared_x: bytes, iv: bytes | None = None) -> str:
    """Encrypt with an already derived shared x; ``iv`` (16 bytes) is random unless given."""
    if not isinstance(plaintext, str):
        raise EncryptionError("plaintext must be a string")
    if len(shared_x) != 32:
        raise EncryptionError("shared key must be 32 bytes")
    if iv is None:
        iv = os.urandom(16)
    elif len(iv) != 16:
        raise EncryptionError("iv must be 16 bytes")
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EncryptionError("plaintext is not valid Unicode") from None
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES256(shared_x), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode("ascii") + _SEPARATOR + base64.b64encode(iv).decode()


def decrypt_with_key(payload: str, shared_x: bytes, *, max_payload: int = MAX_PAYLOAD) -> str:
    """Decrypt with an already derived shared x; DecryptionError on any malformed payload."""
    if not isinstance(payload, str):
        raise DecryptionError("payload must be a string")
    if len(payload) > max_payload:
        raise DecryptionError("payload too large")
    if len(shared_x) != 32:
        raise DecryptionError("shared key must be 32 bytes")
    parts = payload.split(_SEPARATOR)
    if len(parts) != 2:
        raise DecryptionError("missing iv")
    try:
        ciphertext = base64.b64decode(parts[0], validate=True)
        iv = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("invalid base64") from None
    if len(iv) != 16:
        raise DecryptionError("invalid iv")
    if not ciphertext or len(ciphertext) % 16:
        raise DecryptionError("invalid ciphertext length")
    decryptor = Cipher(algorithms.AES256(shared_x), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        data = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionError("invalid padding") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError("plaintext is not valid UTF-8") from None


def encrypt(plaintext: str, privkey_hex: str, pubkey_hex: str, iv: bytes | None = None) -> str:
    """Encrypt from hex keys; InvalidKey for a bad secret or an off-curve public key."""
    return encrypt_with_key(plaintext, _shared_x(privkey_hex, pubkey_hex), iv)


def decrypt(payload: str, privkey_hex: str, pubkey_hex: str) -> str:
    """Decrypt from hex keys; InvalidKey for bad keys, DecryptionError for a bad payload."""
    return decrypt_with_key(payload, _shared_x(privkey_hex, pubkey_hex))
