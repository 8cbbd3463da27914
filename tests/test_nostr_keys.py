"""Tests for keycast_tw.nostr.keys: BIP-340 vectors, key validation, ECDH and secrecy of reprs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import SkipTest

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.errors import InvalidKey, NostrError
from keycast_tw.nostr.keys import (
    SecretKey,
    ecdh_x,
    generate_private_key,
    parse_pubkey,
    public_key_hex,
    schnorr_sign,
    schnorr_verify,
)
from tests.strategies import CURVE_ORDER, private_keys
from tests.vectors import VECTORS_DIR, load_csv, load_json, vector_path

SEC = bytes.fromhex("67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa")
PUB_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"
# An x coordinate with no point on secp256k1 (from the NIP-44 invalid vectors).
OFF_CURVE = bytes.fromhex("1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef")


class BIP340VectorTests(SynchronousTestCase):
    """Every row of the official bip340-test-vectors.csv, through the Nostr-facing API."""

    def setUp(self) -> None:
        self.rows = load_csv("bip340-test-vectors.csv")

    def test_row_count(self) -> None:
        """The file is the 19-row official one."""
        self.assertEqual(len(self.rows), 19)

    def test_signing_rows_reproduce_signatures(self) -> None:
        """With the given aux_rand, signing reproduces each 32-byte-message signature exactly."""
        signed = 0
        for row in self.rows:
            message = bytes.fromhex(row["message"])
            if not row["secret key"] or len(message) != 32:
                continue
            secret = bytes.fromhex(row["secret key"])
            aux = bytes.fromhex(row["aux_rand"])
            expected = bytes.fromhex(row["signature"])
            self.assertEqual(schnorr_sign(message, secret, aux), expected, row["index"])
            self.assertEqual(SecretKey(secret).sign(message, aux), expected, row["index"])
            signed += 1
        self.assertEqual(signed, 4)

    def test_public_keys(self) -> None:
        """Every row with a secret key derives its public key, rows 15-18 included."""
        derived = 0
        for row in self.rows:
            if row["secret key"]:
                secret = bytes.fromhex(row["secret key"])
                self.assertEqual(public_key_hex(secret), row["public key"].lower(), row["index"])
                derived += 1
        self.assertEqual(derived, 8)

    def test_verification_results(self) -> None:
        """Every 32-byte-message row verifies to its expected TRUE/FALSE."""
        checked = 0
        for row in self.rows:
            message = bytes.fromhex(row["message"])
            if len(message) != 32:
                continue
            result = schnorr_verify(
                message, bytes.fromhex(row["public key"]), bytes.fromhex(row["signature"])
            )
            self.assertEqual(result, row["verification result"] == "TRUE", row["index"])
            checked += 1
        self.assertEqual(checked, 15)

    def test_invalid_public_key_rows(self) -> None:
        """The rows whose public key is off the curve or above p are rejected by parse_pubkey."""
        for index in ("5", "14"):
            row = self.rows[int(index)]
            self.assertEqual(row["index"], index)
            with self.assertRaises(InvalidKey):
                parse_pubkey(row["public key"])

    def test_non_32_byte_messages_rejected(self) -> None:
        """Rows 15-18 use 0/1/17/100-byte messages; Nostr signs only 32-byte ids: both refuse."""
        rows = [row for row in self.rows if len(bytes.fromhex(row["message"])) != 32]
        self.assertEqual([row["index"] for row in rows], ["15", "16", "17", "18"])
        for row in rows:
            message = bytes.fromhex(row["message"])
            self.assertFalse(
                schnorr_verify(
                    message, bytes.fromhex(row["public key"]), bytes.fromhex(row["signature"])
                )
            )
            with self.assertRaises(NostrError):
                SecretKey(bytes.fromhex(row["secret key"])).sign(message)


class SecretKeyTests(SynchronousTestCase):
    """Construction, validation and use of SecretKey."""

    def test_pubkey(self) -> None:
        """The x-only public key of the NIP-19 example nsec is its npub's key."""
        key = SecretKey(SEC)
        self.assertEqual(key.pubkey_hex, PUB_HEX)
        self.assertEqual(key.pubkey, bytes.fromhex(PUB_HEX))
        self.assertEqual(key.to_bytes(), SEC)

    def test_from_hex(self) -> None:
        """from_hex accepts 64 hex characters in either case."""
        self.assertEqual(SecretKey.from_hex(SEC.hex()).pubkey_hex, PUB_HEX)
        self.assertEqual(SecretKey.from_hex(SEC.hex().upper()).pubkey_hex, PUB_HEX)

    def test_from_hex_rejects_malformed(self) -> None:
        """Short, long, non-hex, padded or non-string input raises InvalidKey."""
        for bad in (
            SEC.hex()[:-1],
            SEC.hex() + "0",
            "g" * 64,
            " " + SEC.hex()[1:],
            SEC.hex() + "\n",
        ):
            with self.assertRaises(InvalidKey):
                SecretKey.from_hex(bad)
        with self.assertRaises(InvalidKey):
            SecretKey.from_hex(SEC)  # type: ignore[arg-type]

    def test_out_of_range_scalars(self) -> None:
        """0, n, n+1 and 2^256-1 are not secret keys; n-1 and 1 are."""
        for bad in (0, CURVE_ORDER, CURVE_ORDER + 1, 2**256 - 1):
            with self.assertRaises(InvalidKey):
                SecretKey(bad.to_bytes(32, "big"))
        SecretKey((CURVE_ORDER - 1).to_bytes(32, "big"))
        SecretKey((1).to_bytes(32, "big"))

    def test_wrong_type_or_length(self) -> None:
        """Only 32-byte bytes objects are accepted."""
        for bad in (SEC[:31], SEC + b"\0", bytearray(SEC), SEC.hex()):
            with self.assertRaises(InvalidKey):
                SecretKey(bad)  # type: ignore[arg-type]

    def test_repr_hides_secret(self) -> None:
        """repr and str show only a pubkey prefix, never the secret."""
        key = SecretKey(SEC)
        for text in (repr(key), str(key)):
            self.assertNotIn(SEC.hex(), text)
            self.assertNotIn(SEC.hex()[:8], text)
            self.assertIn(PUB_HEX[:8], text)

    def test_generate(self) -> None:
        """Generated keys are valid and distinct."""
        first, second = SecretKey.generate(), SecretKey.generate()
        self.assertNotEqual(first.to_bytes(), second.to_bytes())
        self.assertEqual(len(generate_private_key()), 32)
        SecretKey(generate_private_key())

    def test_sign_uses_fresh_aux(self) -> None:
        """Two signatures of one message differ (random aux) and both verify."""
        key = SecretKey(SEC)
        message = bytes(range(32))
        first, second = key.sign(message), key.sign(message)
        self.assertNotEqual(first, second)
        self.assertTrue(schnorr_verify(message, key.pubkey, first))
        self.assertTrue(schnorr_verify(message, key.pubkey, second))

    def test_sign_rejects_bad_aux(self) -> None:
        """An aux that is not 32 bytes is refused rather than silently used."""
        with self.assertRaises(NostrError):
            SecretKey(SEC).sign(bytes(32), b"short")

    def test_concurrent_signing(self) -> None:
        """One SecretKey signs correctly from several threads at once (the crypto pool)."""
        key = SecretKey(SEC)
        messages = [i.to_bytes(32, "big") for i in range(400)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            signatures = list(pool.map(key.sign, messages))
        for message, signature in zip(messages, signatures, strict=True):
            self.assertTrue(schnorr_verify(message, key.pubkey, signature))

    @given(private_keys, st.binary(min_size=32, max_size=32))
    def test_sign_verify_round_trip(self, secret: bytes, message: bytes) -> None:
        """Any valid key signs any 32-byte message verifiably, and not for another key."""
        key = SecretKey(secret)
        signature = key.sign(message)
        self.assertTrue(schnorr_verify(message, key.pubkey, signature))
        self.assertFalse(schnorr_verify(bytes(a ^ 1 for a in message), key.pubkey, signature))


class VerifyTests(SynchronousTestCase):
    """schnorr_verify never raises."""

    @given(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=70))
    def test_garbage_is_false(self, message: bytes, pubkey: bytes, signature: bytes) -> None:
        """Arbitrary bytes of any length give False, not an exception."""
        self.assertFalse(schnorr_verify(message, pubkey, signature))

    def test_wrong_types_are_false(self) -> None:
        """Non-bytes arguments give False."""
        self.assertFalse(schnorr_verify("0" * 32, PUB_HEX, "0" * 64))  # type: ignore[arg-type]
        self.assertFalse(schnorr_verify(bytes(32), OFF_CURVE, bytes(64)))


class ECDHTests(SynchronousTestCase):
    """Raw-x ECDH as NIP-04 and NIP-44 need it."""

    def test_nip04_vectors(self) -> None:
        """ecdh_x reproduces each NIP-04 vector's shared x from both sides."""
        for case in load_json("nip04.vectors.json")["cases"]:
            sec1, sec2 = bytes.fromhex(case["sec1"]), bytes.fromhex(case["sec2"])
            pub1, pub2 = bytes.fromhex(case["pub1"]), bytes.fromhex(case["pub2"])
            self.assertEqual(ecdh_x(sec1, pub2).hex(), case["shared_x"])
            self.assertEqual(ecdh_x(sec2, pub1).hex(), case["shared_x"])
            self.assertEqual(SecretKey(sec1).shared_x(pub2).hex(), case["shared_x"])

    @given(private_keys, private_keys)
    def test_symmetric(self, secret_a: bytes, secret_b: bytes) -> None:
        """a·B and b·A have the same x coordinate."""
        key_a, key_b = SecretKey(secret_a), SecretKey(secret_b)
        self.assertEqual(key_a.shared_x(key_b.pubkey), key_b.shared_x(key_a.pubkey))

    def test_invalid_inputs(self) -> None:
        """An off-curve or short public key, or an invalid secret, raises InvalidKey."""
        with self.assertRaises(InvalidKey):
            ecdh_x(SEC, OFF_CURVE)
        with self.assertRaises(InvalidKey):
            ecdh_x(SEC, bytes(31))
        with self.assertRaises(InvalidKey):
            ecdh_x(bytes(32), bytes.fromhex(PUB_HEX))
        with self.assertRaises(InvalidKey):
            SecretKey(SEC).shared_x(OFF_CURVE)


class ParsePubkeyTests(SynchronousTestCase):
    """parse_pubkey validates hex format and curve membership."""

    def test_accepts_hex_and_bytes(self) -> None:
        """Lowercase hex, uppercase hex and 32 bytes all give the raw key."""
        raw = bytes.fromhex(PUB_HEX)
        self.assertEqual(parse_pubkey(PUB_HEX), raw)
        self.assertEqual(parse_pubkey(PUB_HEX.upper()), raw)
        self.assertEqual(parse_pubkey(raw), raw)

    def test_rejects(self) -> None:
        """Wrong length, non-hex, whitespace and off-curve keys raise InvalidKey."""
        for bad in (
            PUB_HEX[:-1],
            PUB_HEX + "00",
            "z" * 64,
            PUB_HEX[:-1] + " ",
            OFF_CURVE.hex(),
            OFF_CURVE,
            b"\x02" + bytes.fromhex(PUB_HEX),
        ):
            with self.assertRaises(InvalidKey):
                parse_pubkey(bad)


class VectorLoaderTests(SynchronousTestCase):
    """tests/vectors.py skips locally but fails under CI when the shared vectors are missing."""

    def test_found(self) -> None:
        """An existing file resolves inside ../shared/vectors."""
        self.assertEqual(vector_path("nip44.vectors.json"), VECTORS_DIR / "nip44.vectors.json")

    def test_missing_skips_locally(self) -> None:
        """Without CI=true a missing folder skips the test with the path in the reason."""
        with self.assertRaisesRegex(SkipTest, "no-such-dir"):
            vector_path("x.json", directory=Path("/no-such-dir"), environ={})

    def test_missing_fails_in_ci(self) -> None:
        """Under CI=true a missing folder is an error, so CI cannot pass by skipping."""
        with self.assertRaises(FileNotFoundError):
            vector_path("x.json", directory=Path("/no-such-dir"), environ={"CI": "true"})
