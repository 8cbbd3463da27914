"""Tests for keycast_tw.nostr.nip04: the compiled decrypt vectors and every failure mode."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip04
from keycast_tw.nostr.errors import DecryptionError, EncryptionError, InvalidKey
from keycast_tw.nostr.keys import SecretKey
from tests.strategies import private_keys, texts
from tests.vectors import load_json

SHARED = bytes(range(32))
IV = bytes(range(16))


def _raw_cbc(data: bytes, key: bytes = SHARED, iv: bytes = IV) -> str:
    """Encrypt already padded (or deliberately mis-padded) bytes into the NIP-04 wire form."""
    encryptor = Cipher(algorithms.AES256(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(data) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode() + "?iv=" + base64.b64encode(iv).decode()


class VectorTests(SynchronousTestCase):
    """nip04.vectors.json (decrypt only: the IVs were random)."""

    def setUp(self) -> None:
        self.cases = load_json("nip04.vectors.json")["cases"]

    def test_decrypt_both_directions(self) -> None:
        """Each of the 4 cases decrypts with either party's secret and with the shared x."""
        self.assertEqual(len(self.cases), 4)
        for case in self.cases:
            plaintext = case["plaintext"]
            self.assertEqual(nip04.decrypt(case["payload"], case["sec1"], case["pub2"]), plaintext)
            self.assertEqual(nip04.decrypt(case["payload"], case["sec2"], case["pub1"]), plaintext)
            shared = bytes.fromhex(case["shared_x"])
            self.assertEqual(nip04.decrypt_with_key(case["payload"], shared), plaintext)

    def test_reencrypt_with_vector_iv(self) -> None:
        """Encrypting the plaintext with the vector's own IV reproduces the payload exactly."""
        for case in self.cases:
            iv = base64.b64decode(case["payload"].split("?iv=")[1])
            payload = nip04.encrypt(case["plaintext"], case["sec1"], case["pub2"], iv)
            self.assertEqual(payload, case["payload"])

    def test_wrong_key(self) -> None:
        """A third party's key gives DecryptionError whose message has no plaintext."""
        for case in self.cases:
            with self.assertRaises(DecryptionError) as caught:
                nip04.decrypt_with_key(case["payload"], SHARED)
            self.assertNotIn(case["plaintext"], str(caught.exception))
            self.assertIn(
                caught.exception.reason, {"invalid padding", "plaintext is not valid UTF-8"}
            )


class FailureModeTests(SynchronousTestCase):
    """Malformed payloads are typed errors."""

    def _reason(self, payload: str) -> str:
        """The DecryptionError reason for a payload under the fixed SHARED key."""
        with self.assertRaises(DecryptionError) as caught:
            nip04.decrypt_with_key(payload, SHARED)
        return caught.exception.reason

    def test_bad_padding(self) -> None:
        """A final block that is not PKCS#7 is invalid padding."""
        self.assertEqual(self._reason(_raw_cbc(b"a" * 15 + b"\x00")), "invalid padding")
        self.assertEqual(self._reason(_raw_cbc(b"a" * 14 + b"\x03\x03")), "invalid padding")

    def test_bad_utf8(self) -> None:
        """Correctly padded bytes that are not UTF-8 are refused."""
        self.assertEqual(
            self._reason(_raw_cbc(b"\xff" * 15 + b"\x01")), "plaintext is not valid UTF-8"
        )

    def test_bad_base64(self) -> None:
        """Non-base64 text in either half is invalid base64."""
        good = nip04.encrypt_with_key("hi", SHARED, IV)
        ciphertext, iv = good.split("?iv=")
        self.assertEqual(self._reason("!!!!" + "?iv=" + iv), "invalid base64")
        self.assertEqual(self._reason(ciphertext + "?iv=" + "ф" * 24), "invalid base64")
        self.assertEqual(self._reason(ciphertext[:-1] + "?iv=" + iv), "invalid base64")

    def test_structure(self) -> None:
        """Missing or repeated ?iv=, wrong IV size and partial blocks are refused."""
        good = nip04.encrypt_with_key("hi", SHARED, IV)
        ciphertext, iv = good.split("?iv=")
        self.assertEqual(self._reason(ciphertext), "missing iv")
        self.assertEqual(self._reason(good + "?iv=" + iv), "missing iv")
        self.assertEqual(
            self._reason(ciphertext + "?iv=" + base64.b64encode(bytes(8)).decode()), "invalid iv"
        )
        self.assertEqual(
            self._reason(base64.b64encode(bytes(15)).decode() + "?iv=" + iv),
            "invalid ciphertext length",
        )
        self.assertEqual(self._reason("?iv=" + iv), "invalid ciphertext length")

    def test_too_large(self) -> None:
        """Payloads over max_payload are refused before any decoding."""
        good = nip04.encrypt_with_key("hi", SHARED, IV)
        with self.assertRaises(DecryptionError) as caught:
            nip04.decrypt_with_key(good, SHARED, max_payload=len(good) - 1)
        self.assertEqual(caught.exception.reason, "payload too large")

    def test_non_string_and_bad_keys(self) -> None:
        """Wrong types and key sizes are typed errors, bad hex keys are InvalidKey."""
        with self.assertRaises(DecryptionError):
            nip04.decrypt_with_key(None, SHARED)  # type: ignore[arg-type]
        with self.assertRaises(DecryptionError):
            nip04.decrypt_with_key("x?iv=y", SHARED[:16])
        with self.assertRaises(EncryptionError):
            nip04.encrypt_with_key("x", SHARED[:16])
        with self.assertRaises(EncryptionError):
            nip04.encrypt_with_key("x", SHARED, bytes(8))
        with self.assertRaises(EncryptionError):
            nip04.encrypt_with_key("\udc00", SHARED)
        with self.assertRaises(EncryptionError):
            nip04.encrypt_with_key(b"x", SHARED)  # type: ignore[arg-type]
        with self.assertRaises(InvalidKey):
            nip04.encrypt("x", "00" * 32, "11" * 32)

    def test_is_nip04(self) -> None:
        """Only payloads with ?iv= are NIP-04; NIP-44 base64 is not."""
        self.assertTrue(nip04.is_nip04(nip04.encrypt_with_key("hi", SHARED)))
        self.assertFalse(nip04.is_nip04("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB+/=="))


class RoundTripTests(SynchronousTestCase):
    """Property tests."""

    @given(texts, st.binary(min_size=32, max_size=32))
    def test_round_trip(self, plaintext: str, shared: bytes) -> None:
        """Any text, including empty, decrypts back with the same shared x."""
        self.assertEqual(
            nip04.decrypt_with_key(nip04.encrypt_with_key(plaintext, shared), shared), plaintext
        )

    @given(private_keys, private_keys, texts)
    def test_between_parties(self, secret_a: bytes, secret_b: bytes, plaintext: str) -> None:
        """What A encrypts for B, B decrypts with A's public key."""
        key_a, key_b = SecretKey(secret_a), SecretKey(secret_b)
        payload = nip04.encrypt(plaintext, secret_a.hex(), key_b.pubkey_hex)
        self.assertEqual(nip04.decrypt(payload, secret_b.hex(), key_a.pubkey_hex), plaintext)

    @given(st.text(max_size=200))
    def test_garbage(self, payload: str) -> None:
        """Arbitrary strings raise DecryptionError and nothing else."""
        with self.assertRaises(DecryptionError):
            nip04.decrypt_with_key(payload, SHARED)
