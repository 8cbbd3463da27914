"""Tests for keycast_tw.nostr.event: canonical serialization, ids, signing and verification."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr.errors import InvalidEvent
from keycast_tw.nostr.event import (
    check_event,
    event_id,
    is_valid_created_at,
    is_valid_kind,
    is_valid_tags,
    serialize,
    sign_event,
    sign_validated,
    validate_shape,
    verify_event,
)
from keycast_tw.nostr.keys import SecretKey
from tests.strategies import json_values, private_keys, tags, texts
from tests.vectors import load_json

SEC = bytes.fromhex("67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa")
PUB_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"
TEMPLATE: dict[str, Any] = {
    "kind": 1,
    "content": "hello",
    "tags": [["p", PUB_HEX]],
    "created_at": 1700000000,
}


def _change_char(text: str, position: int) -> str:
    """Replace one character with a different one, keeping hex strings hex."""
    replacement = "0" if text[position] != "0" else "1"
    return text[:position] + replacement + text[position + 1 :]


def _change_text(text: str) -> str:
    """A one-character change of any string: the first character replaced, or one added."""
    return _change_char(text, 0) if text else "0"


class RealEventTests(SynchronousTestCase):
    """The 18 real signed events in nostr-events.verified.json."""

    def setUp(self) -> None:
        self.cases = load_json("nostr-events.verified.json")["events"]

    def test_count(self) -> None:
        """All 18 fixtures are present."""
        self.assertEqual(len(self.cases), 18)

    def test_serialization_and_id(self) -> None:
        """serialize() is byte-identical to the canonical string and the id matches."""
        for case in self.cases:
            self.assertEqual(serialize(case["event"]).decode("utf-8"), case["serialized"])
            self.assertEqual(event_id(case["event"]), case["event"]["id"])

    def test_all_verify(self) -> None:
        """Every real event verifies and passes check_event."""
        for case in self.cases:
            self.assertTrue(verify_event(case["event"]), case["fixture"])
            check_event(case["event"])

    def test_hex_field_changes_fail(self) -> None:
        """Changing any single character of id, pubkey or sig makes verification fail."""
        for case in self.cases:
            for field in ("id", "pubkey", "sig"):
                value = case["event"][field]
                for position in range(len(value)):
                    event = dict(case["event"], **{field: _change_char(value, position)})
                    self.assertFalse(verify_event(event), (case["fixture"], field, position))

    def test_content_changes_fail(self) -> None:
        """Changing the first, middle or last content character, or adding one, fails."""
        for case in self.cases:
            content = case["event"]["content"]
            positions = {0, len(content) // 2, len(content) - 1} if content else set()
            variants = [content + "x", *(_change_char(content, p) for p in positions)]
            for variant in variants:
                self.assertFalse(
                    verify_event(dict(case["event"], content=variant)), case["fixture"]
                )

    def test_number_changes_fail(self) -> None:
        """created_at or kind off by one fails."""
        for case in self.cases:
            event = case["event"]
            self.assertFalse(verify_event(dict(event, created_at=event["created_at"] + 1)))
            kind = event["kind"] + 1 if event["kind"] < 65535 else event["kind"] - 1
            self.assertFalse(verify_event(dict(event, kind=kind)))

    def test_tag_changes_fail(self) -> None:
        """Changing one character of any tag value, or adding a tag, fails."""
        for case in self.cases:
            event = case["event"]
            self.assertFalse(verify_event(dict(event, tags=[*event["tags"], ["t"]])))
            for tag_index, tag in enumerate(event["tags"]):
                for item_index, item in enumerate(tag):
                    changed = copy.deepcopy(event["tags"])
                    changed[tag_index][item_index] = _change_text(item)
                    self.assertFalse(verify_event(dict(event, tags=changed)), case["fixture"])


class SerializationTests(SynchronousTestCase):
    """Exactly JSON.stringify of [0,pubkey,created_at,kind,tags,content]."""

    def _event(self, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "pubkey": PUB_HEX,
            "created_at": 1,
            "kind": 1,
            "tags": [],
            "content": "",
        }
        base.update(fields)
        return base

    def test_escapes(self) -> None:
        """Short escapes, \\u00XX for other C0 controls, the rest verbatim, as JSON.stringify."""
        content = 'a\nb"c\\d\te\r\b\f\x00\x1f\x7f/é😀\u2028'
        expected = (
            '[0,"' + PUB_HEX + '",1,1,[],"a\\nb\\"c\\\\d\\te\\r\\b\\f\\u0000\\u001f\x7f/é😀\u2028"]'
        ).encode()
        self.assertEqual(serialize(self._event(content=content)), expected)

    @given(texts, tags, st.integers(0, 65535), st.integers(0, 2**53 - 1))
    def test_matches_stdlib_json(
        self, content: str, tag_list: list[list[str]], kind: int, created_at: int
    ) -> None:
        """serialize agrees with json.dumps(separators, ensure_ascii=False) for any valid event."""
        event = self._event(content=content, tags=tag_list, kind=kind, created_at=created_at)
        expected = json.dumps(
            [0, PUB_HEX, created_at, kind, tag_list, content],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        self.assertEqual(serialize(event), expected)

    def test_lone_surrogate_rejected(self) -> None:
        """A lone surrogate in content or a tag has no UTF-8 form: InvalidEvent."""
        with self.assertRaises(InvalidEvent):
            serialize(self._event(content="a\ud800b"))
        with self.assertRaises(InvalidEvent):
            serialize(self._event(tags=[["t", "\udfff"]]))

    def test_bad_shapes(self) -> None:
        """Booleans, floats, out-of-range numbers and wrong types are InvalidEvent."""
        bad_fields: list[dict[str, Any]] = [
            {"kind": True},
            {"kind": 1.0},
            {"kind": -1},
            {"kind": 65536},
            {"kind": "1"},
            {"created_at": False},
            {"created_at": 1.5},
            {"created_at": -1},
            {"created_at": 2**53},
            {"created_at": None},
            {"tags": "t"},
            {"tags": [["t", 1]]},
            {"tags": ["t"]},
            {"tags": None},
            {"content": None},
            {"content": 5},
            {"pubkey": PUB_HEX.upper()},
            {"pubkey": PUB_HEX[:-1]},
            {"pubkey": None},
        ]
        for fields in bad_fields:
            with self.assertRaises(InvalidEvent, msg=repr(fields)):
                serialize(self._event(**fields))

    def test_not_a_mapping(self) -> None:
        """A list is not an event."""
        with self.assertRaises(InvalidEvent):
            serialize([0, PUB_HEX])  # type: ignore[arg-type]


class SignTests(SynchronousTestCase):
    """sign_event fills pubkey, id and sig and keeps the rest exactly."""

    def test_sign_and_verify(self) -> None:
        """A signed template verifies and keeps kind, content, tags and created_at."""
        event = sign_event(TEMPLATE, SEC)
        self.assertTrue(verify_event(event))
        self.assertEqual(event["pubkey"], PUB_HEX)
        for field in ("kind", "content", "tags", "created_at"):
            self.assertEqual(event[field], TEMPLATE[field])
        self.assertEqual(event["id"], event_id(event))
        self.assertEqual(
            set(event), {"id", "pubkey", "created_at", "kind", "tags", "content", "sig"}
        )

    def test_secret_key_object(self) -> None:
        """A SecretKey signs the same way as raw bytes."""
        event = sign_event(TEMPLATE, SecretKey(SEC))
        self.assertEqual(event["id"], sign_event(TEMPLATE, SEC)["id"])
        self.assertTrue(verify_event(event))

    def test_overrides_template_identity(self) -> None:
        """A template's pubkey, id and sig (as NDK sends them) are replaced."""
        template = dict(TEMPLATE, pubkey="ab" * 32, id="cd" * 32, sig="")
        event = sign_event(template, SEC)
        self.assertEqual(event["pubkey"], PUB_HEX)
        self.assertTrue(verify_event(event))

    def test_created_at_default(self) -> None:
        """A missing or null created_at takes the injected clock's time, truncated."""
        template = {key: value for key, value in TEMPLATE.items() if key != "created_at"}
        self.assertEqual(sign_event(template, SEC, now=lambda: 1234.9)["created_at"], 1234)
        self.assertEqual(
            sign_event(dict(template, created_at=None), SEC, now=lambda: 7.0)["created_at"], 7
        )

    def test_missing_fields(self) -> None:
        """A template without kind, content or tags is refused."""
        for field in ("kind", "content", "tags"):
            template = {key: value for key, value in TEMPLATE.items() if key != field}
            with self.assertRaises(InvalidEvent):
                sign_event(template, SEC)

    def test_bad_template_values(self) -> None:
        """A template with a boolean kind or non-string tag is refused, not signed."""
        with self.assertRaises(InvalidEvent):
            sign_event(dict(TEMPLATE, kind=True), SEC)
        with self.assertRaises(InvalidEvent):
            sign_event(dict(TEMPLATE, tags=[[1]]), SEC)
        with self.assertRaises(InvalidEvent):
            sign_event("{}", SEC)  # type: ignore[arg-type]

    @given(private_keys, texts, tags, st.integers(0, 65535), st.integers(0, 2**40))
    def test_round_trip(
        self, secret: bytes, content: str, tag_list: list[list[str]], kind: int, created_at: int
    ) -> None:
        """Any valid template signs into an event that verifies; a content change breaks it."""
        event = sign_event(
            {"kind": kind, "content": content, "tags": tag_list, "created_at": created_at}, secret
        )
        self.assertTrue(verify_event(event))
        self.assertFalse(verify_event(dict(event, content=content + " ")))


class SignValidatedTests(SynchronousTestCase):
    """sign_validated signs fields the caller vouches for, exactly as sign_event would."""

    def test_same_event_as_sign_event(self) -> None:
        """Same fields, same key: the same id, field order and a verifying signature."""
        event = sign_validated(SecretKey(SEC), **TEMPLATE)
        expected = sign_event(TEMPLATE, SEC)
        self.assertEqual(event["id"], expected["id"])
        self.assertEqual(list(event), list(expected))
        self.assertTrue(verify_event(event))

    def test_lone_surrogate_still_refused(self) -> None:
        """A lone surrogate cannot be serialized even on the trusted path: InvalidEvent."""
        with self.assertRaises(InvalidEvent):
            sign_validated(SecretKey(SEC), **dict(TEMPLATE, content="a\ud800"))


class PredicateTests(SynchronousTestCase):
    """The field predicates that sign_event and the engine's sign_event method share."""

    def test_kind(self) -> None:
        """Kinds are ints 0..65535, never bools, floats or strings."""
        self.assertTrue(all(is_valid_kind(kind) for kind in (0, 1, 65535)))
        self.assertFalse(any(is_valid_kind(kind) for kind in (-1, 65536, True, 1.0, "1", None)))

    def test_created_at(self) -> None:
        """created_at is an int 0..2^53-1, never a bool or float."""
        self.assertTrue(all(is_valid_created_at(value) for value in (0, 2**53 - 1)))
        bad = (-1, 2**53, False, 1.5, "1", None)
        self.assertFalse(any(is_valid_created_at(value) for value in bad))

    def test_tags(self) -> None:
        """Tags are a list of lists of strings; empty lists are fine, other items are not."""
        good: list[Any] = [[], [[]], [["e", "x"]], (("t", "y"),)]
        self.assertTrue(all(is_valid_tags(value) for value in good))
        bad: list[Any] = [None, "t", ["t"], [["e", 1]], [["e", None]], [["e", ["x"]]], [{}]]
        self.assertFalse(any(is_valid_tags(value) for value in bad))


class CheckTests(SynchronousTestCase):
    """check_event explains, verify_event never raises."""

    def test_reasons(self) -> None:
        """A wrong id and a wrong signature are told apart."""
        event = sign_event(TEMPLATE, SEC)
        with self.assertRaisesRegex(InvalidEvent, "id does not match"):
            check_event(dict(event, content="other"))
        foreign_sig = sign_event(dict(TEMPLATE, content="other"), SEC)["sig"]
        with self.assertRaisesRegex(InvalidEvent, "invalid signature"):
            check_event(dict(event, sig=foreign_sig))

    def test_shape_reasons(self) -> None:
        """Uppercase or short id/sig fail validate_shape."""
        event = sign_event(TEMPLATE, SEC)
        self.assertIs(validate_shape(event), event)
        for bad in (
            dict(event, id=event["id"].upper()),
            dict(event, sig=event["sig"][:-2]),
            dict(event, id=None),
        ):
            with self.assertRaises(InvalidEvent):
                check_event(bad)

    @given(json_values)
    def test_garbage_never_raises(self, value: Any) -> None:
        """verify_event returns False for arbitrary JSON values."""
        self.assertFalse(verify_event(value))

    @given(
        st.dictionaries(
            st.sampled_from(["id", "pubkey", "sig", "kind", "tags", "content", "created_at"]),
            json_values,
        )
    )
    def test_garbage_fields_never_raise(self, value: dict[str, Any]) -> None:
        """verify_event returns False for objects with NIP-01 keys and arbitrary values."""
        self.assertFalse(verify_event(value))
