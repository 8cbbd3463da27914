"""NIP-19 bech32 entities: npub, nsec, nprofile, and decoding of nevent and naddr.

NIP-19 uses bech32 (BIP-173, checksum constant 1), not bech32m, and drops BIP-173's 90-character
limit because TLV entities with relays are longer. The ``bech32`` package on PyPI is the BIP-173
reference and enforces that limit, so the codec is implemented here from the BIP text; input is
still capped at NIP-19's recommended 5000 characters so a hostile string costs little.

TLV payloads are ``type(1) length(1) value``; unknown types are ignored, order is free, and a
truncated entry is an error (a naive decoder loops forever on one).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

from keycast_tw.nostr.errors import Bech32Error
from keycast_tw.nostr.keys import SecretKey, parse_pubkey

__all__ = [
    "MAX_LENGTH",
    "decode",
    "decode_naddr",
    "decode_nevent",
    "decode_nprofile",
    "decode_npub",
    "decode_nsec",
    "encode",
    "encode_nprofile",
    "encode_npub",
    "encode_nsec",
    "parse_tlv",
]

MAX_LENGTH: Final = 5000
_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHAR_VALUES: Final = {char: value for value, char in enumerate(_CHARSET)}
_GENERATOR: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_CONST: Final = 1
TLV_SPECIAL: Final = 0
TLV_RELAY: Final = 1
TLV_AUTHOR: Final = 2
TLV_KIND: Final = 3


def _polymod(values: Iterable[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]


def _convert_bits(data: Iterable[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    accumulator, bits, out = 0, 0, []
    mask = (1 << to_bits) - 1
    for value in data:
        accumulator = (accumulator << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((accumulator >> bits) & mask)
    if pad:
        if bits:
            out.append((accumulator << (to_bits - bits)) & mask)
    elif bits >= from_bits or (accumulator << (to_bits - bits)) & mask:
        raise Bech32Error("invalid bech32 padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    """bech32-encode raw bytes under a lowercase human-readable prefix."""
    if not hrp or hrp.lower() != hrp or any(not 33 <= ord(char) <= 126 for char in hrp):
        raise Bech32Error("invalid bech32 prefix")
    words = _convert_bits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ _BECH32_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    encoded = hrp + "1" + "".join(_CHARSET[word] for word in words + checksum)
    if len(encoded) > MAX_LENGTH:
        raise Bech32Error("bech32 string would exceed 5000 characters")
    return encoded


def decode(text: str) -> tuple[str, bytes]:
    """Decode any bech32 string into (prefix, raw bytes); Bech32Error when invalid."""
    if not isinstance(text, str) or not 8 <= len(text) <= MAX_LENGTH:
        raise Bech32Error("bech32 string has an invalid length")
    if any(not 33 <= ord(char) <= 126 for char in text):
        raise Bech32Error("bech32 string has invalid characters")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("bech32 string mixes upper and lower case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or separator + 7 > len(text):
        raise Bech32Error("bech32 separator misplaced")
    hrp = text[:separator]
    try:
        words = [_CHAR_VALUES[char] for char in text[separator + 1 :]]
    except KeyError:
        raise Bech32Error("bech32 string has invalid characters") from None
    if _polymod(_hrp_expand(hrp) + words) != _BECH32_CONST:
        raise Bech32Error("bech32 checksum mismatch")
    return hrp, bytes(_convert_bits(words[:-6], 5, 8, pad=False))


def _decode_as(text: str, hrp: str) -> bytes:
    found, data = decode(text)
    if found != hrp:
        raise Bech32Error(f"expected a {hrp} string")
    return data


def _fixed32(data: bytes, hrp: str) -> bytes:
    if len(data) != 32:
        raise Bech32Error(f"{hrp} payload must be 32 bytes")
    return data


def encode_npub(pubkey_hex: str) -> str:
    """The npub of a 64-hex x-only public key (InvalidKey when it is not on the curve)."""
    return encode("npub", parse_pubkey(pubkey_hex))


def decode_npub(text: str) -> str:
    """The lowercase hex public key of an npub; Bech32Error or InvalidKey when invalid."""
    return parse_pubkey(_fixed32(_decode_as(text, "npub"), "npub")).hex()


def encode_nsec(privkey: bytes) -> str:
    """The nsec of a 32-byte secret key (validated first)."""
    return encode("nsec", SecretKey(privkey).to_bytes())


def decode_nsec(text: str) -> bytes:
    """The 32-byte secret key of an nsec; Bech32Error or InvalidKey when invalid."""
    return SecretKey(_fixed32(_decode_as(text, "nsec"), "nsec")).to_bytes()


def parse_tlv(data: bytes) -> list[tuple[int, bytes]]:
    """Split a TLV payload into (type, value) entries; Bech32Error on a truncated entry."""
    entries, position = [], 0
    while position < len(data):
        if position + 2 > len(data):
            raise Bech32Error("truncated TLV entry")
        kind, length = data[position], data[position + 1]
        value = data[position + 2 : position + 2 + length]
        if len(value) != length:
            raise Bech32Error("truncated TLV entry")
        entries.append((kind, value))
        position += 2 + length
    return entries


def _encode_tlv(entries: Sequence[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for kind, value in entries:
        if len(value) > 255:
            raise Bech32Error("TLV value longer than 255 bytes")
        out += bytes((kind, len(value))) + value
    return bytes(out)


def _relays(entries: list[tuple[int, bytes]]) -> list[str]:
    try:
        return [value.decode("ascii") for kind, value in entries if kind == TLV_RELAY]
    except UnicodeDecodeError:
        raise Bech32Error("relay URL must be ASCII") from None


def _first(entries: list[tuple[int, bytes]], wanted: int) -> bytes | None:
    return next((value for kind, value in entries if kind == wanted), None)


def _required_key(entries: list[tuple[int, bytes]], wanted: int, what: str) -> str:
    value = _first(entries, wanted)
    if value is None or len(value) != 32:
        raise Bech32Error(f"{what} must be 32 bytes")
    return value.hex()


def encode_nprofile(pubkey_hex: str, relays: Iterable[str] = ()) -> str:
    """An nprofile: the public key (TLV 0) and relay hints (TLV 1, ASCII URLs)."""
    entries = [(TLV_SPECIAL, parse_pubkey(pubkey_hex))]
    try:
        entries += [(TLV_RELAY, relay.encode("ascii")) for relay in relays]
    except UnicodeEncodeError:
        raise Bech32Error("relay URL must be ASCII") from None
    return encode("nprofile", _encode_tlv(entries))


def decode_nprofile(text: str) -> tuple[str, list[str]]:
    """(pubkey hex, relay hints) of an nprofile."""
    entries = parse_tlv(_decode_as(text, "nprofile"))
    return _required_key(entries, TLV_SPECIAL, "nprofile public key"), _relays(entries)


def _kind(entries: list[tuple[int, bytes]]) -> int | None:
    value = _first(entries, TLV_KIND)
    if value is None:
        return None
    if len(value) != 4:
        raise Bech32Error("kind must be 4 bytes")
    kind: int = struct.unpack(">I", value)[0]
    return kind


def decode_nevent(text: str) -> tuple[str, list[str], str | None, int | None]:
    """(event id hex, relay hints, author hex or None, kind or None) of an nevent."""
    entries = parse_tlv(_decode_as(text, "nevent"))
    author = _first(entries, TLV_AUTHOR)
    if author is not None and len(author) != 32:
        raise Bech32Error("nevent author must be 32 bytes")
    return (
        _required_key(entries, TLV_SPECIAL, "nevent id"),
        _relays(entries),
        None if author is None else author.hex(),
        _kind(entries),
    )


def decode_naddr(text: str) -> tuple[str, str, int, list[str]]:
    """(d-tag identifier, author hex, kind, relay hints) of an naddr."""
    entries = parse_tlv(_decode_as(text, "naddr"))
    identifier = _first(entries, TLV_SPECIAL)
    kind = _kind(entries)
    if identifier is None or kind is None:
        raise Bech32Error("naddr needs an identifier and a kind")
    try:
        name = identifier.decode("utf-8")
    except UnicodeDecodeError:
        raise Bech32Error("naddr identifier must be UTF-8") from None
    return name, _required_key(entries, TLV_AUTHOR, "naddr author"), kind, _relays(entries)
