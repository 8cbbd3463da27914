"""Tests for keycast_tw.nostr.nip44: the official v2 vectors, the size policy and failure modes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip44
from keycast_tw.nostr.errors import DecryptionError, EncryptionError, InvalidKey, NostrError
from keycast_tw.nostr.keys import SecretKey
from tests.strategies import nonempty_texts, private_keys
from tests.vectors import load_json

CONV_KEY = bytes.fromhex("c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d")
NONCE = bytes(31) + b"\x01"
# Reason that each official invalid.decrypt note must produce.
DECRYPT_REASONS = {
    "unknown encryption version": "unknown version",
    "unknown encryption version 0": "unknown version",
    "invalid base64": "invalid base64",
    "invalid MAC": "invalid MAC",
    "invalid padding": "invalid padding",
    "invalid payload length: 0": "unknown version",
    "invalid payload length: 4": "invalid payload size",
    "invalid payload length: 48": "invalid payload size",
    "invalid payload length: 92": "invalid payload size",
}


def _seal(padded: bytes, conversation_key: bytes = CONV_KEY, nonce: bytes = NONCE) -> str:
    """Build a correctly MACed payload around arbitrary padded bytes, to test the unpadding."""
    chacha_key, chacha_nonce, hmac_key = nip44.get_message_keys(conversation_key, nonce)
    cipher = Cipher(algorithms.ChaCha20(chacha_key, bytes(4) + chacha_nonce), None)
    ciphertext = cipher.encryptor().update(padded)
    mac = hmac.digest(hmac_key, nonce + ciphertext, "sha256")
    return base64.b64encode(b"\x02" + nonce + ciphertext + mac).decode()


class OfficialVectorTests(SynchronousTestCase):
    """nip44.vectors.json, sha256 269ed0f6..., the file whose checksum NIP-44 publishes."""

    def setUp(self) -> None:
        self.vectors = load_json("nip44.vectors.json")["v2"]

    def test_conversation_keys(self) -> None:
        """All 35 conversation keys, through the hex API and the SecretKey fast path."""
        cases = self.vectors["valid"]["get_conversation_key"]
        self.assertEqual(len(cases), 35)
        for case in cases:
            expected = bytes.fromhex(case["conversation_key"])
            self.assertEqual(nip44.get_conversation_key(case["sec1"], case["pub2"]), expected)
            secret = SecretKey.from_hex(case["sec1"])
            self.assertEqual(nip44.conversation_key(secret, bytes.fromhex(case["pub2"])), expected)

    def test_invalid_conversation_keys(self) -> None:
        """All 8 invalid key pairs (bad scalars, off-curve and twist points) raise InvalidKey."""
        cases = self.vectors["invalid"]["get_conversation_key"]
        self.assertEqual(len(cases), 8)
        for case in cases:
            with self.assertRaises(InvalidKey, msg=case["note"]):
                nip44.get_conversation_key(case["sec1"], case["pub2"])

    def test_message_keys(self) -> None:
        """All 32 HKDF-expand results."""
        vectors = self.vectors["valid"]["get_message_keys"]
        conversation_key = bytes.fromhex(vectors["conversation_key"])
        self.assertEqual(len(vectors["keys"]), 32)
        for case in vectors["keys"]:
            keys = nip44.get_message_keys(conversation_key, bytes.fromhex(case["nonce"]))
            self.assertEqual(
                tuple(key.hex() for key in keys),
                (case["chacha_key"], case["chacha_nonce"], case["hmac_key"]),
            )

    def test_padded_lengths(self) -> None:
        """All 24 calc_padded_len pairs."""
        cases = self.vectors["valid"]["calc_padded_len"]
        self.assertEqual(len(cases), 24)
        for length, padded in cases:
            self.assertEqual(nip44.calc_padded_len(length), padded, length)

    def test_encrypt_decrypt(self) -> None:
        """All 10 cases: exact payload, decryption, and the key symmetry between sec1 and sec2."""
        cases = self.vectors["valid"]["encrypt_decrypt"]
        self.assertEqual(len(cases), 10)
        for case in cases:
            conversation_key = bytes.fromhex(case["conversation_key"])
            key1, key2 = SecretKey.from_hex(case["sec1"]), SecretKey.from_hex(case["sec2"])
            self.assertEqual(nip44.conversation_key(key1, key2.pubkey), conversation_key)
            self.assertEqual(nip44.conversation_key(key2, key1.pubkey), conversation_key)
            payload = nip44.encrypt(
                case["plaintext"], conversation_key, bytes.fromhex(case["nonce"])
            )
            self.assertEqual(payload, case["payload"])
            self.assertEqual(nip44.decrypt(case["payload"], conversation_key), case["plaintext"])

    def test_long_messages(self) -> None:
        """The 3 long-message cases match their payload sha256 and decrypt back."""
        cases = self.vectors["valid"]["encrypt_decrypt_long_msg"]
        self.assertEqual(len(cases), 3)
        for case in cases:
            conversation_key = bytes.fromhex(case["conversation_key"])
            plaintext = case["pattern"] * case["repeat"]
            self.assertEqual(
                hashlib.sha256(plaintext.encode()).hexdigest(), case["plaintext_sha256"]
            )
            payload = nip44.encrypt(plaintext, conversation_key, bytes.fromhex(case["nonce"]))
            self.assertEqual(hashlib.sha256(payload.encode()).hexdigest(), case["payload_sha256"])
            self.assertEqual(nip44.decrypt(payload, conversation_key), plaintext)

    def test_invalid_decrypt(self) -> None:
        """All 12 invalid payloads raise DecryptionError with the reason their note names."""
        cases = self.vectors["invalid"]["decrypt"]
        self.assertEqual(len(cases), 12)
        for case in cases:
            with self.assertRaises(DecryptionError, msg=case["note"]) as caught:
                nip44.decrypt(case["payload"], bytes.fromhex(case["conversation_key"]))
            self.assertEqual(caught.exception.reason, DECRYPT_REASONS[case["note"]])
            self.assertNotIn(case["plaintext"], str(caught.exception))

    def test_invalid_lengths_under_default_limit(self) -> None:
        """With the default 65535-byte limit, all 4 official invalid lengths are refused."""
        lengths = self.vectors["invalid"]["encrypt_msg_lengths"]
        self.assertEqual(lengths, [0, 65536, 100000, 10000000])
        for length in lengths:
            with self.assertRaises(EncryptionError):
                nip44.encrypt("a" * length, CONV_KEY, NONCE)

    def test_invalid_lengths_under_extended_limit(self) -> None:
        """Under the 2026-06 spec only 0 stays invalid; the others encrypt and decrypt back."""
        limit = nip44.MAX_PLAINTEXT_EXTENDED
        with self.assertRaises(EncryptionError):
            nip44.encrypt("", CONV_KEY, max_plaintext=limit)
        for length in self.vectors["invalid"]["encrypt_msg_lengths"][1:]:
            plaintext = "a" * length
            payload = nip44.encrypt(plaintext, CONV_KEY, max_plaintext=limit)
            self.assertEqual(nip44.decrypt(payload, CONV_KEY, max_payload=len(payload)), plaintext)


class ExtendedPrefixTests(SynchronousTestCase):
    """nip44.extended-prefix.vectors.json: the 65535/65536/65537 boundary of the 6-byte prefix."""

    def setUp(self) -> None:
        self.vectors = load_json("nip44.extended-prefix.vectors.json")
        self.conversation_key = bytes.fromhex(self.vectors["conversation_key"])
        self.nonce = bytes.fromhex(self.vectors["nonce"])

    def test_payloads(self) -> None:
        """Each case matches its payload sha256, layout and padded length; decrypt accepts it."""
        cases = self.vectors["cases"]
        self.assertEqual(len(cases), 3)
        for case in cases:
            plaintext = self.vectors["plaintext_pattern"] * case["plaintext_len"]
            payload = nip44.encrypt(
                plaintext,
                self.conversation_key,
                self.nonce,
                max_plaintext=nip44.MAX_PLAINTEXT_EXTENDED,
            )
            self.assertEqual(hashlib.sha256(payload.encode()).hexdigest(), case["payload_sha256"])
            data_len = len(base64.b64decode(payload))
            self.assertEqual(data_len, 1 + 32 + case["prefix_len"] + case["padded_len"] + 32)
            self.assertEqual(nip44.calc_padded_len(case["plaintext_len"]), case["padded_len"])
            self.assertEqual(nip44.decrypt(payload, self.conversation_key), plaintext)

    def test_default_encrypt_limit(self) -> None:
        """By default 65535 bytes encrypt and 65536 are refused, for old clients' sake."""
        nip44.encrypt("a" * 65535, self.conversation_key)
        with self.assertRaises(EncryptionError):
            nip44.encrypt("a" * 65536, self.conversation_key)
        with self.assertRaises(EncryptionError):
            nip44.encrypt("é" * 32768, self.conversation_key)

    def test_extended_prefix_below_65536_rejected(self) -> None:
        """A 6-byte prefix declaring fewer than 65536 bytes is invalid padding."""
        padded = struct.pack(">HI", 0, 100) + b"a" * 100 + bytes(128 - 100)
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt(_seal(padded), CONV_KEY)
        self.assertEqual(caught.exception.reason, "invalid padding")


class FailureModeTests(SynchronousTestCase):
    """Every malformed input is a typed error that carries no plaintext."""

    def test_tampered_ciphertext_fails_mac(self) -> None:
        """Flipping a ciphertext bit is caught by the MAC before any decryption."""
        payload = nip44.encrypt("secret words", CONV_KEY, NONCE)
        data = bytearray(base64.b64decode(payload))
        data[40] ^= 1
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt(base64.b64encode(bytes(data)).decode(), CONV_KEY)
        self.assertEqual(caught.exception.reason, "invalid MAC")

    def test_wrong_key(self) -> None:
        """Another conversation key fails the MAC, and the error does not leak the plaintext."""
        payload = nip44.encrypt("secret words", CONV_KEY)
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt(payload, bytes(32))
        self.assertEqual(caught.exception.reason, "invalid MAC")
        self.assertNotIn("secret", str(caught.exception))

    def test_length_checked_before_base64(self) -> None:
        """An oversize payload is refused as too large even when it is not base64 at all."""
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt("!" * 1000, CONV_KEY, max_payload=999)
        self.assertEqual(caught.exception.reason, "payload too large")
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt("!" * (nip44.MAX_PAYLOAD + 1), CONV_KEY)
        self.assertEqual(caught.exception.reason, "payload too large")

    def test_invalid_utf8(self) -> None:
        """Correctly padded bytes that are not UTF-8 are a DecryptionError."""
        padded = struct.pack(">H", 2) + b"\xff\xfe" + bytes(30)
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt(_seal(padded), CONV_KEY)
        self.assertEqual(caught.exception.reason, "plaintext is not valid UTF-8")

    def test_zero_length_prefix(self) -> None:
        """A declared length of 0 with a 6-byte form of 0 is invalid padding."""
        with self.assertRaises(DecryptionError) as caught:
            nip44.decrypt(_seal(bytes(34)), CONV_KEY)
        self.assertEqual(caught.exception.reason, "invalid padding")

    def test_non_string_payload(self) -> None:
        """A payload that is not a string is an unknown version, not a crash."""
        with self.assertRaises(DecryptionError):
            nip44.decrypt(b"AAAA", CONV_KEY)  # type: ignore[arg-type]

    def test_bad_key_and_nonce_lengths(self) -> None:
        """Wrong conversation key or nonce lengths are NostrErrors."""
        with self.assertRaises(EncryptionError):
            nip44.encrypt("x", bytes(31))
        with self.assertRaises(EncryptionError):
            nip44.encrypt("x", CONV_KEY, bytes(16))
        with self.assertRaises(NostrError):
            nip44.get_message_keys(CONV_KEY, bytes(31))
        payload = nip44.encrypt("x", CONV_KEY)
        with self.assertRaises(DecryptionError):
            nip44.decrypt(payload, bytes(16))

    def test_surrogate_plaintext(self) -> None:
        """A lone surrogate cannot be encrypted."""
        with self.assertRaises(EncryptionError):
            nip44.encrypt("\ud800", CONV_KEY)

    def test_random_nonce(self) -> None:
        """Without a nonce, two encryptions of one plaintext differ."""
        self.assertNotEqual(nip44.encrypt("x", CONV_KEY), nip44.encrypt("x", CONV_KEY))


class RoundTripTests(SynchronousTestCase):
    """Property tests."""

    @given(nonempty_texts, st.binary(min_size=32, max_size=32))
    def test_round_trip(self, plaintext: str, conversation_key: bytes) -> None:
        """Any non-empty text decrypts back to itself, with a padded-length payload."""
        payload = nip44.encrypt(plaintext, conversation_key)
        self.assertEqual(nip44.decrypt(payload, conversation_key), plaintext)
        size = len(plaintext.encode())
        self.assertEqual(
            len(base64.b64decode(payload)), 1 + 32 + 2 + nip44.calc_padded_len(size) + 32
        )

    @given(private_keys, private_keys, nonempty_texts)
    def test_between_parties(self, secret_a: bytes, secret_b: bytes, plaintext: str) -> None:
        """What A encrypts for B, B decrypts with its own conversation key."""
        key_a, key_b = SecretKey(secret_a), SecretKey(secret_b)
        payload = nip44.encrypt(plaintext, nip44.conversation_key(key_a, key_b.pubkey))
        self.assertEqual(
            nip44.decrypt(payload, nip44.conversation_key(key_b, key_a.pubkey)), plaintext
        )

    @given(st.integers(min_value=1, max_value=2**32 - 1))
    def test_padded_length_properties(self, size: int) -> None:
        """The padded length covers the plaintext, and wastes under 32 bytes or a quarter."""
        padded = nip44.calc_padded_len(size)
        self.assertGreaterEqual(padded, max(size, 32))
        if 32 < size <= 256:
            self.assertLess(padded - size, 32)
        elif size > 256:
            self.assertLess(4 * (padded - size), size)

    @given(st.text(max_size=300))
    def test_garbage_payloads(self, payload: str) -> None:
        """Arbitrary strings raise DecryptionError and nothing else."""
        with self.assertRaises(DecryptionError):
            nip44.decrypt(payload, CONV_KEY)
