"""NIP-44 v2 encryption: secp256k1 ECDH, HKDF-SHA256, ChaCha20 and HMAC-SHA256.

Size limits, decided here because the spec and the official vectors disagree:

- Since 2026-06 NIP-44 allows plaintexts up to 2^32-1 bytes, framed with a 6-byte length prefix
  (``00 00`` + u32) when they reach 65536 bytes. The official vector file predates that and
  still lists 65536+ as invalid, and clients older than nostr-tools 2.23.4 cannot decrypt such
  payloads. ``encrypt`` therefore refuses more than ``MAX_PLAINTEXT`` = 65535 bytes by default,
  so everything the bunker sends can be read by every client; callers that know their peer is
  current pass ``max_plaintext=MAX_PLAINTEXT_EXTENDED``.
- ``decrypt`` always accepts the extended prefix (being liberal costs nothing: the MAC is
  checked first) and rejects payloads longer than ``max_payload`` characters *before* base64
  decoding, so a hostile multi-megabyte string costs one ``len``. The default,
  ``MAX_PAYLOAD`` = 4 MiB of base64, is above what public relays accept in one message.

Errors never contain the plaintext; ``DecryptionError.reason`` names the failed check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from keycast_tw.nostr.errors import DecryptionError, EncryptionError, NostrError
from keycast_tw.nostr.keys import SecretKey, ecdh_x, parse_pubkey

__all__ = [
    "MAX_PAYLOAD",
    "MAX_PLAINTEXT",
    "MAX_PLAINTEXT_EXTENDED",
    "calc_padded_len",
    "conversation_key",
    "decrypt",
    "encrypt",
    "get_conversation_key",
    "get_message_keys",
]

VERSION: Final = 2
MAX_PLAINTEXT: Final = 65535
MAX_PLAINTEXT_EXTENDED: Final = 2**32 - 1
MAX_PAYLOAD: Final = 4 * 1024 * 1024
_SALT: Final = b"nip44-v2"
_MIN_PAYLOAD: Final = 132
_MIN_DATA: Final = 99
_COUNTER0: Final = b"\x00\x00\x00\x00"


def get_conversation_key(privkey_hex: str, pubkey_hex: str) -> bytes:
    """HKDF-extract(salt="nip44-v2", IKM=ECDH x); symmetric between the two parties.

    Raises InvalidKey for a secret outside [1, n-1] or a public key that is not on the curve.
    """
    secret = SecretKey.from_hex(privkey_hex).to_bytes()
    return hmac.digest(_SALT, ecdh_x(secret, parse_pubkey(pubkey_hex)), "sha256")


def conversation_key(secret: SecretKey, pubkey: bytes) -> bytes:
    """The same as ``get_conversation_key`` for an already parsed key (the engine's fast path)."""
    return hmac.digest(_SALT, secret.shared_x(pubkey), "sha256")


def calc_padded_len(n: int) -> int:
    """Padded plaintext length: 32 bytes minimum, then chunks of 1/8 of the next power of two."""
    if n <= 32:
        return 32
    next_power = 1 << (n - 1).bit_length()
    chunk = 32 if next_power <= 256 else next_power // 8
    return chunk * ((n - 1) // chunk + 1)


def get_message_keys(conversation_key: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """HKDF-expand(conversation_key, info=nonce, 76) -> (chacha_key, chacha_nonce, hmac_key)."""
    if len(conversation_key) != 32:
        raise NostrError("conversation key must be 32 bytes")
    if len(nonce) != 32:
        raise NostrError("nonce must be 32 bytes")
    keys = HKDFExpand(hashes.SHA256(), 76, nonce).derive(conversation_key)
    return keys[:32], keys[32:44], keys[44:]


def _chacha20(key: bytes, nonce12: bytes, data: bytes) -> bytes:
    # cryptography's ChaCha20 nonce is a 4-byte little-endian block counter + the RFC 8439 nonce.
    return Cipher(algorithms.ChaCha20(key, _COUNTER0 + nonce12), None).encryptor().update(data)


def _pad(unpadded: bytes) -> bytes:
    size = len(unpadded)
    prefix = struct.pack(">H", size) if size < 65536 else struct.pack(">HI", 0, size)
    return prefix + unpadded + bytes(calc_padded_len(size) - size)


def encrypt(
    plaintext: str,
    conversation_key: bytes,
    nonce: bytes | None = None,
    *,
    max_plaintext: int = MAX_PLAINTEXT,
) -> str:
    """Encrypt to a base64 v2 payload; ``nonce`` (32 bytes) is random unless given for tests.

    Raises EncryptionError for an empty plaintext or one longer than ``max_plaintext`` bytes of
    UTF-8 (see the module docstring for the default).
    """
    if not isinstance(plaintext, str):
        raise EncryptionError("plaintext must be a string")
    try:
        unpadded = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EncryptionError("plaintext is not valid Unicode") from None
    if not 1 <= len(unpadded) <= min(max_plaintext, MAX_PLAINTEXT_EXTENDED):
        raise EncryptionError("invalid plaintext length")
    if len(conversation_key) != 32:
        raise EncryptionError("conversation key must be 32 bytes")
    if nonce is None:
        nonce = os.urandom(32)
    elif len(nonce) != 32:
        raise EncryptionError("nonce must be 32 bytes")
    chacha_key, chacha_nonce, hmac_key = get_message_keys(conversation_key, nonce)
    ciphertext = _chacha20(chacha_key, chacha_nonce, _pad(unpadded))
    mac = hmac.digest(hmac_key, nonce + ciphertext, "sha256")
    return base64.b64encode(b"\x02" + nonce + ciphertext + mac).decode("ascii")


def _unpad(padded: bytes) -> bytes:
    (size,) = struct.unpack_from(">H", padded)
    prefix_len = 2
    if size == 0:
        (size,) = struct.unpack_from(">I", padded, 2)
        prefix_len = 6
        if size < 65536:
            raise DecryptionError("invalid padding")
    if len(padded) != prefix_len + calc_padded_len(size):
        raise DecryptionError("invalid padding")
    return padded[prefix_len : prefix_len + size]


def decrypt(payload: str, conversation_key: bytes, *, max_payload: int = MAX_PAYLOAD) -> str:
    """Decrypt a v2 payload; DecryptionError on every malformed, forged or oversize input.

    The checks run in the spec's order: version marker, payload length (before any decoding),
    strict base64, data length, version byte, then the MAC in constant time, and only then
    ChaCha20 and the padding check.
    """
    if not isinstance(payload, str) or not payload or payload[0] == "#":
        raise DecryptionError("unknown version")
    if len(payload) < _MIN_PAYLOAD:
        raise DecryptionError("invalid payload size")
    if len(payload) > max_payload:
        raise DecryptionError("payload too large")
    if len(conversation_key) != 32:
        raise DecryptionError("conversation key must be 32 bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("invalid base64") from None
    if len(data) < _MIN_DATA:
        raise DecryptionError("invalid data size")
    if data[0] != VERSION:
        raise DecryptionError("unknown version")
    nonce, ciphertext, mac = data[1:33], data[33:-32], data[-32:]
    chacha_key, chacha_nonce, hmac_key = get_message_keys(conversation_key, nonce)
    expected = hmac.digest(hmac_key, nonce + ciphertext, "sha256")
    if not hmac.compare_digest(expected, mac):
        raise DecryptionError("invalid MAC")
    unpadded = _unpad(_chacha20(chacha_key, chacha_nonce, ciphertext))
    try:
        return unpadded.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError("plaintext is not valid UTF-8") from None
