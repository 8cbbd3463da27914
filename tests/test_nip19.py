"""Tests for keycast_tw.nostr.nip19: the compiled vectors, bech32 rules and TLV parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip19
from keycast_tw.nostr.errors import Bech32Error, InvalidKey, NostrError
from keycast_tw.nostr.keys import SecretKey
from tests.strategies import private_keys
from tests.vectors import load_json

NPUB = "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"
PUB_HEX = "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"
ascii_relays = st.from_regex(r"wss://[a-z0-9.]{1,40}(/[a-z0-9]{0,20})?", fullmatch=True)


def _with_checksum(hrp: str, words: list[int], constant: int) -> str:
    """Assemble a bech32-style string from 5-bit words with the given checksum constant."""
    polymod = nip19._polymod([*nip19._hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ constant
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(nip19._CHARSET[word] for word in words + checksum)


class VectorTests(SynchronousTestCase):
    """nip19.vectors.json: 6 valid strings and 1 invalid one."""

    def setUp(self) -> None:
        self.vectors = load_json("nip19.vectors.json")

    def _cases(self, kind: str) -> list[dict[str, object]]:
        """The valid cases of one entity type."""
        return [case for case in self.vectors["valid"] if case["type"] == kind]

    def test_counts(self) -> None:
        """The file holds the expected 6 valid and 1 invalid case."""
        self.assertEqual(len(self.vectors["valid"]), 6)
        self.assertEqual(len(self.vectors["invalid"]), 1)

    def test_npub(self) -> None:
        """Both npub examples decode and re-encode exactly."""
        for case in self._cases("npub"):
            self.assertEqual(nip19.decode_npub(case["bech32"]), case["hex"])
            self.assertEqual(nip19.encode_npub(case["hex"]), case["bech32"])

    def test_nsec(self) -> None:
        """The nsec example decodes, re-encodes, and derives the documented public key."""
        (case,) = self._cases("nsec")
        secret = nip19.decode_nsec(case["bech32"])
        self.assertEqual(secret.hex(), case["hex"])
        self.assertEqual(nip19.encode_nsec(secret), case["bech32"])
        self.assertEqual(SecretKey(secret).pubkey_hex, case["derived_pubkey_hex"])

    def test_nprofile(self) -> None:
        """The nprofile example (over 90 characters) decodes and re-encodes exactly."""
        (case,) = self._cases("nprofile")
        self.assertGreater(len(case["bech32"]), 90)
        self.assertEqual(nip19.decode_nprofile(case["bech32"]), (case["pubkey"], case["relays"]))
        self.assertEqual(nip19.encode_nprofile(case["pubkey"], case["relays"]), case["bech32"])

    def test_naddr(self) -> None:
        """Both naddr cases decode, including the one with TLV order 0,2,3,1,1."""
        for case in self._cases("naddr"):
            self.assertEqual(
                nip19.decode_naddr(case["bech32"]),
                (case["identifier"], case["pubkey"], case["kind"], case["relays"]),
            )

    def test_invalid_nevent(self) -> None:
        """The malformed nevent has a valid checksum but a truncated TLV: Bech32Error, no loop."""
        (case,) = self.vectors["invalid"]
        self.assertEqual(nip19.decode(case["bech32"]), ("nevent", b"\x00"))
        with self.assertRaises(Bech32Error):
            nip19.decode_nevent(case["bech32"])


class Bech32Tests(SynchronousTestCase):
    """The bech32 codec rules."""

    def test_uppercase_accepted_mixed_refused(self) -> None:
        """All-uppercase decodes; mixed case is refused."""
        self.assertEqual(nip19.decode_npub(NPUB.upper()), PUB_HEX)
        with self.assertRaises(Bech32Error):
            nip19.decode(NPUB[:10] + NPUB[10:].upper())

    def test_checksum(self) -> None:
        """Any single changed character breaks the checksum."""
        for position in range(5, len(NPUB)):
            replacement = "q" if NPUB[position] != "q" else "p"
            with self.assertRaises(Bech32Error):
                nip19.decode(NPUB[:position] + replacement + NPUB[position + 1 :])

    def test_bech32m_refused(self) -> None:
        """The same payload with a bech32m checksum (constant 0x2bc830a3) is refused."""
        words = [nip19._CHAR_VALUES[char] for char in NPUB[5:-6]]
        self.assertEqual(_with_checksum("npub", words, 1), NPUB)
        with self.assertRaises(Bech32Error):
            nip19.decode(_with_checksum("npub", words, 0x2BC830A3))

    def test_malformed(self) -> None:
        """Too short, too long, no separator, bad characters and wrong types are refused."""
        for text in (
            "npub1",
            "a" * 5001,
            "npubqqqqqqqqqq",
            "npub1bqqqqqqq",
            "np\x7fb1qqqqqqq",
            " " + NPUB,
        ):
            with self.assertRaises(Bech32Error, msg=text):
                nip19.decode(text)
        with self.assertRaises(Bech32Error):
            nip19.decode(None)  # type: ignore[arg-type]

    def test_wrong_prefix_and_size(self) -> None:
        """An npub is not an nsec; a 31-byte payload is not a key."""
        with self.assertRaises(Bech32Error):
            nip19.decode_nsec(NPUB)
        with self.assertRaises(Bech32Error):
            nip19.decode_npub(nip19.encode("npub", bytes(31)))

    def test_invalid_keys(self) -> None:
        """Checksummed but invalid keys (off-curve, zero scalar) raise InvalidKey."""
        off_curve = bytes.fromhex(
            "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
        )
        with self.assertRaises(InvalidKey):
            nip19.decode_npub(nip19.encode("npub", off_curve))
        with self.assertRaises(InvalidKey):
            nip19.decode_nsec(nip19.encode("nsec", bytes(32)))
        with self.assertRaises(InvalidKey):
            nip19.encode_nsec(bytes(32))

    def test_padding_bits(self) -> None:
        """Non-zero padding bits after the last byte are refused."""
        text = nip19.encode("npub", bytes.fromhex(PUB_HEX))
        words = [nip19._CHAR_VALUES[char] for char in text[5:-6]]
        words[-1] |= 1  # 256 bits in 52 words leave 4 padding bits; set one
        with self.assertRaises(Bech32Error):
            nip19.decode(_with_checksum("npub", words, 1))

    def test_encode_limits(self) -> None:
        """Uppercase prefixes and results over 5000 characters are refused."""
        with self.assertRaises(Bech32Error):
            nip19.encode("NPUB", bytes(32))
        with self.assertRaises(Bech32Error):
            nip19.encode("x", bytes(3200))


class TLVTests(SynchronousTestCase):
    """TLV entity details."""

    def test_truncated(self) -> None:
        """A type without length, or a length beyond the data, raises."""
        for data in (b"\x00", b"\x00\x05abc", b"\x01\x00\x00"):
            with self.assertRaises(Bech32Error, msg=repr(data)):
                nip19.parse_tlv(data)

    def test_unknown_types_ignored(self) -> None:
        """An unknown TLV type between known ones does not disturb the nprofile."""
        data = (
            bytes([9, 2]) + b"zz" + bytes([0, 32]) + bytes.fromhex(PUB_HEX) + bytes([1, 3]) + b"wss"
        )
        self.assertEqual(nip19.decode_nprofile(nip19.encode("nprofile", data)), (PUB_HEX, ["wss"]))

    def test_missing_key(self) -> None:
        """An nprofile without its public key is refused."""
        with self.assertRaises(Bech32Error):
            nip19.decode_nprofile(nip19.encode("nprofile", bytes([1, 3]) + b"wss"))

    def test_non_ascii_relay(self) -> None:
        """Relay hints are ASCII."""
        with self.assertRaises(Bech32Error):
            nip19.encode_nprofile(PUB_HEX, ["wss://é.example"])
        data = bytes([0, 32]) + bytes.fromhex(PUB_HEX) + bytes([1, 2]) + "é".encode()
        with self.assertRaises(Bech32Error):
            nip19.decode_nprofile(nip19.encode("nprofile", data))

    def test_nevent_fields(self) -> None:
        """An nevent carries its id, relays, optional author and optional kind."""
        event_id = bytes(range(32))
        data = (
            bytes([0, 32])
            + event_id
            + bytes([2, 32])
            + bytes.fromhex(PUB_HEX)
            + bytes([3, 4, 0, 0, 0, 1])
        )
        self.assertEqual(
            nip19.decode_nevent(nip19.encode("nevent", data)), (event_id.hex(), [], PUB_HEX, 1)
        )
        with self.assertRaises(Bech32Error):
            nip19.decode_nevent(
                nip19.encode("nevent", bytes([0, 32]) + event_id + bytes([3, 2, 0, 1]))
            )
        with self.assertRaises(Bech32Error):
            nip19.decode_nevent(
                nip19.encode("nevent", bytes([0, 32]) + event_id + bytes([2, 1, 0]))
            )

    def test_naddr_requirements(self) -> None:
        """An naddr without kind, or with a non-UTF-8 identifier, is refused."""
        author = bytes([2, 32]) + bytes.fromhex(PUB_HEX)
        with self.assertRaises(Bech32Error):
            nip19.decode_naddr(nip19.encode("naddr", bytes([0, 1]) + b"d" + author))
        with self.assertRaises(Bech32Error):
            nip19.decode_naddr(
                nip19.encode("naddr", bytes([0, 1, 0xFF]) + author + bytes([3, 4, 0, 0, 0, 1]))
            )


class RoundTripTests(SynchronousTestCase):
    """Property tests."""

    @given(private_keys)
    def test_keys(self, secret: bytes) -> None:
        """Any key survives nsec and npub encoding."""
        key = SecretKey(secret)
        self.assertEqual(nip19.decode_nsec(nip19.encode_nsec(secret)), secret)
        self.assertEqual(nip19.decode_npub(nip19.encode_npub(key.pubkey_hex)), key.pubkey_hex)

    @given(private_keys, st.lists(ascii_relays, max_size=5))
    def test_nprofile(self, secret: bytes, relays: list[str]) -> None:
        """Any public key with any ASCII relays survives nprofile encoding."""
        pubkey = SecretKey(secret).pubkey_hex
        self.assertEqual(
            nip19.decode_nprofile(nip19.encode_nprofile(pubkey, relays)), (pubkey, relays)
        )

    @given(st.from_regex(r"[a-z]{1,10}", fullmatch=True), st.binary(max_size=300))
    def test_generic(self, hrp: str, data: bytes) -> None:
        """decode inverts encode for any prefix and payload."""
        self.assertEqual(nip19.decode(nip19.encode(hrp, data)), (hrp, data))

    @given(st.text(max_size=200))
    def test_garbage(self, text: str) -> None:
        """Arbitrary text raises a NostrError or decodes, nothing else."""
        try:
            hrp, _ = nip19.decode(text)
        except NostrError:
            return
        self.assertTrue(hrp)
