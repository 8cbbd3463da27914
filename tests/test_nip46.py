"""Tests for keycast_tw.nostr.nip46: messages, permission strings and connection URIs."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.nostr import nip46
from keycast_tw.nostr.errors import InvalidURI, MalformedRequest, NostrError
from keycast_tw.nostr.nip46 import (
    BunkerURI,
    NostrConnectURI,
    Request,
    Response,
    parse_bunker_uri,
    parse_nostrconnect_uri,
    parse_perms,
    parse_request,
    parse_response,
)
from tests.strategies import json_values, nonempty_texts, relay_urls, texts

# nostr-tools nip46.ts BUNKER_REGEX, verbatim.
BUNKER_REGEX = re.compile(r"^bunker:\/\/([0-9a-f]{64})\??([?\/\w:.=&%-]*)$", re.ASCII)
PK = "83f3b2ae6aa368e8275397b9c26cf550101d63ebaab900d19dd4a4429f5ad8f5"
OFF_CURVE = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
SPEC_NOSTRCONNECT = (
    "nostrconnect://83f3b2ae6aa368e8275397b9c26cf550101d63ebaab900d19dd4a4429f5ad8f5"
    "?relay=wss%3A%2F%2Frelay1.example.com&perms=nip44_encrypt%2Cnip44_decrypt%2Csign_event%3A13"
    "%2Csign_event%3A14%2Csign_event%3A1059&name=My+Client&secret=0s8j2djs"
    "&relay=wss%3A%2F%2Frelay2.example2.com"
)
perm_items = st.from_regex(r"[a-z][a-z0-9_]{0,15}(:[0-9]{1,5})?", fullmatch=True)


class ParseRequestTests(SynchronousTestCase):
    """parse_request accepts every client dialect and reports the id of malformed requests."""

    def test_string_params(self) -> None:
        """A current-spec request parses into strings."""
        request = parse_request('{"id":"a-1","method":"nip44_encrypt","params":["pk","hi"]}')
        self.assertEqual(request, Request("a-1", "nip44_encrypt", ("pk", "hi")))

    def test_legacy_values(self) -> None:
        """Numeric ids become text, object params compact JSON, null "" and numbers text."""
        request = parse_request(
            '{"id":42,"method":"sign_event","params":[{"kind":1,"tags":[]},null,7,true]}'
        )
        self.assertEqual(request.id, "42")
        self.assertEqual(request.params, ('{"kind":1,"tags":[]}', "", "7", "true"))

    def test_missing_or_null_params(self) -> None:
        """A request without params (or with null) has none."""
        self.assertEqual(parse_request('{"id":"x","method":"ping"}').params, ())
        self.assertEqual(parse_request('{"id":"x","method":"ping","params":null}').params, ())

    def test_bytes_input(self) -> None:
        """UTF-8 bytes are accepted like text."""
        self.assertEqual(parse_request(b'{"id":"x","method":"ping","params":[]}').method, "ping")  # type: ignore[arg-type]

    def test_unreadable_id(self) -> None:
        """Without a usable id there is no request_id to reply to."""
        for text in (
            '{"method":"ping"}',
            '{"id":true,"method":"ping"}',
            '{"id":1.5,"method":"ping"}',
            '{"id":null,"method":"ping"}',
            '{"id":["x"],"method":"ping"}',
            "[1,2]",
            "not json",
            "",
        ):
            with self.assertRaises(MalformedRequest, msg=text) as caught:
                parse_request(text)
            self.assertIsNone(caught.exception.request_id)
        with self.assertRaises(MalformedRequest):
            parse_request(None)  # type: ignore[arg-type]

    def test_overlong_id_is_unreadable(self) -> None:
        """An id longer than MAX_REQUEST_ID_LENGTH is unreadable, even with a bad method: a
        reply would have to echo it. Ids up to the bound parse."""
        bound = nip46.MAX_REQUEST_ID_LENGTH
        longest = nip46.build_request("i" * bound, "ping", [])
        self.assertEqual(parse_request(longest).id, "i" * bound)
        for method in ("ping", ""):
            with self.assertRaises(MalformedRequest) as caught:
                parse_request(nip46.build_request("i" * (bound + 1), method, []))
            self.assertIsNone(caught.exception.request_id)
            self.assertEqual(str(caught.exception), "request id is too long")

    def test_readable_id(self) -> None:
        """A bad method or params still carries the request id so the engine can answer."""
        for text in (
            '{"id":"r1","params":[]}',
            '{"id":"r1","method":"","params":[]}',
            '{"id":"r1","method":5,"params":[]}',
            '{"id":"r1","method":"connect","params":"topsecret"}',
        ):
            with self.assertRaises(MalformedRequest, msg=text) as caught:
                parse_request(text)
            self.assertEqual(caught.exception.request_id, "r1")
            self.assertNotIn("topsecret", str(caught.exception))

    def test_repr_hides_params(self) -> None:
        """A request's repr shows id and method but no params (plaintexts, secrets)."""
        text = repr(Request("r1", "connect", (PK, "topsecret")))
        self.assertIn("connect", text)
        self.assertNotIn("topsecret", text)

    @given(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=nip46.MAX_REQUEST_ID_LENGTH),
        nonempty_texts,
        st.lists(texts, max_size=5),
    )
    def test_round_trip(self, request_id: str, method: str, params: list[str]) -> None:
        """build_request output parses back to the same request."""
        text = nip46.build_request(request_id, method, params)
        self.assertEqual(parse_request(text), Request(request_id, method, tuple(params)))

    @given(json_values)
    def test_garbage(self, value: Any) -> None:
        """Arbitrary JSON either parses into strings or raises MalformedRequest."""
        try:
            request = parse_request(orjson.dumps(value).decode())
        except MalformedRequest:
            return
        self.assertTrue(all(isinstance(param, str) for param in request.params))


class ResponseTests(SynchronousTestCase):
    """Replies in the shape every client family parses."""

    def test_response_json(self) -> None:
        """A success has id and result only."""
        self.assertEqual(nip46.response_json("a", "pong"), '{"id":"a","result":"pong"}')

    def test_error_json(self) -> None:
        """A failure has result "error" (rust-nostr parses result first) and the error text."""
        self.assertEqual(
            nip46.error_json("a", "Not authorized"),
            '{"id":"a","result":"error","error":"Not authorized"}',
        )

    def test_non_unicode_refused(self) -> None:
        """A lone surrogate cannot be serialized; the error is a NostrError."""
        with self.assertRaises(NostrError):
            nip46.response_json("a", "\ud800")

    def test_parse_response(self) -> None:
        """Success, error and missing fields parse; ids may be numbers."""
        self.assertEqual(
            parse_response(nip46.response_json("a", "ack")), Response("a", "ack", None)
        )
        self.assertEqual(parse_response(nip46.error_json("a", "no")), Response("a", "error", "no"))
        self.assertEqual(parse_response('{"id":3,"error":"x"}'), Response("3", None, "x"))
        self.assertEqual(parse_response('{"id":"3","result":null}'), Response("3", None, None))

    def test_parse_response_rejects(self) -> None:
        """Non-string results or errors and missing ids are MalformedRequest."""
        for text in ('{"id":"a","result":5}', '{"id":"a","error":{}}', '{"result":"x"}', "[]"):
            with self.assertRaises(MalformedRequest, msg=text):
                parse_response(text)

    def test_response_repr_hides_result(self) -> None:
        """A response's repr never shows the result (it may be a decrypted plaintext)."""
        self.assertNotIn("dear diary", repr(Response("a", "dear diary", None)))


class PermsTests(SynchronousTestCase):
    """parse_perms splits method[:param] lists."""

    def test_examples(self) -> None:
        """The spec examples split into (method, param) pairs."""
        self.assertEqual(
            parse_perms("nip44_encrypt,sign_event:4"),
            (("nip44_encrypt", None), ("sign_event", "4")),
        )

    def test_blanks_and_duplicates(self) -> None:
        """Empty items, spaces, empty params and repeats are normalized away."""
        self.assertEqual(
            parse_perms(" sign_event:1 , ,sign_event:1,ping:, :9,"),
            (("sign_event", "1"), ("ping", None)),
        )
        self.assertEqual(parse_perms(""), ())
        self.assertEqual(parse_perms(None), ())  # type: ignore[arg-type]


class BunkerURITests(SynchronousTestCase):
    """bunker:// output and parsing."""

    def test_to_string(self) -> None:
        """Relays and secret are percent-encoded and the output matches nostr-tools' regex."""
        uri = BunkerURI(PK, ("wss://relay.example.com/~me", "ws://127.0.0.1:7777"), "s3cr_-t")
        text = uri.to_string()
        self.assertEqual(
            text,
            f"bunker://{PK}?relay=wss%3A%2F%2Frelay.example.com%2F%7Eme"
            "&relay=ws%3A%2F%2F127.0.0.1%3A7777&secret=s3cr_-t",
        )
        self.assertIsNotNone(BUNKER_REGEX.match(text))

    def test_parse_plain_and_encoded(self) -> None:
        """Plain and encoded relays mix, repeat and dedupe; an absent secret is None."""
        uri = parse_bunker_uri(
            f"bunker://{PK}?relay=wss://relay.nsec.app&relay=wss%3A%2F%2Fnos.lol&relay=wss://nos.lol"
        )
        self.assertEqual(uri, BunkerURI(PK, ("wss://relay.nsec.app", "wss://nos.lol"), None))

    def test_parse_variants(self) -> None:
        """Uppercase hex, a slash before the query, surrounding spaces and empty secrets parse."""
        expected = BunkerURI(PK, ("wss://r.example",), None)
        for text in (
            f"bunker://{PK.upper()}?relay=wss://r.example",
            f"bunker://{PK}/?relay=wss://r.example&secret=",
            f"  BUNKER://{PK}?relay=wss%3A%2F%2Fr.example\n",
        ):
            self.assertEqual(parse_bunker_uri(text), expected, text)

    def test_parse_rejects(self) -> None:
        """Wrong scheme, bad or off-curve keys, no relay or non-WebSocket relays are InvalidURI."""
        for text in (
            f"nostrconnect://{PK}?relay=wss://r.example",
            f"bunker://{PK[:-1]}?relay=wss://r.example",
            f"bunker://{OFF_CURVE}?relay=wss://r.example",
            f"bunker://{PK}",
            f"bunker://{PK}?secret=x",
            f"bunker://{PK}?relay=https://r.example",
            f"bunker://{PK}?relay=wss://",
            f"bunker://{PK}?relay=wss://[::1",
            f"bunker://{PK}?relay=wss://a%20b.example",
            "bunker://",
            "",
        ):
            with self.assertRaises(InvalidURI, msg=text):
                parse_bunker_uri(text)
        with self.assertRaises(InvalidURI):
            parse_bunker_uri(None)  # type: ignore[arg-type]

    def test_constructor_validates(self) -> None:
        """A BunkerURI cannot be built with an uppercase key or no relays; lists become tuples."""
        with self.assertRaises(InvalidURI):
            BunkerURI(PK.upper(), ("wss://r.example",))
        with self.assertRaises(InvalidURI):
            BunkerURI(PK, ())
        with self.assertRaises(InvalidURI):
            BunkerURI(PK, ("wss://r.example",), 5)  # type: ignore[arg-type]
        self.assertEqual(BunkerURI(PK, ["wss://r.example"]).relays, ("wss://r.example",))  # type: ignore[arg-type]

    def test_repr_hides_secret(self) -> None:
        """The secret never appears in repr."""
        self.assertNotIn("hunter2", repr(BunkerURI(PK, ("wss://r.example",), "hunter2")))

    @given(st.lists(relay_urls, min_size=1, max_size=4), st.none() | nonempty_texts)
    def test_round_trip(self, relays: list[str], secret: str | None) -> None:
        """Any relays and any secret survive to_string/parse and always match BUNKER_REGEX."""
        uri = BunkerURI(PK, tuple(relays), secret)
        text = uri.to_string()
        self.assertIsNotNone(BUNKER_REGEX.match(text), text)
        self.assertEqual(parse_bunker_uri(text), uri)

    @given(st.text(max_size=120))
    def test_garbage(self, text: str) -> None:
        """Arbitrary text after the scheme raises InvalidURI only."""
        with self.assertRaises(InvalidURI):
            parse_bunker_uri(f"bunker://{text}")


class NostrConnectURITests(SynchronousTestCase):
    """nostrconnect:// in the spec form, NDK's form and rust-nostr's legacy form."""

    def test_spec_example(self) -> None:
        """The NIP-46 example parses, with + as a space."""
        uri = parse_nostrconnect_uri(SPEC_NOSTRCONNECT)
        self.assertEqual(uri.client_pubkey, PK)
        self.assertEqual(uri.relays, ("wss://relay1.example.com", "wss://relay2.example2.com"))
        self.assertEqual(uri.secret, "0s8j2djs")
        self.assertEqual(
            uri.perms,
            ("nip44_encrypt", "nip44_decrypt", "sign_event:13", "sign_event:14", "sign_event:1059"),
        )
        self.assertEqual(uri.name, "My Client")
        self.assertIsNone(uri.url)
        self.assertEqual(parse_perms(",".join(uri.perms))[2], ("sign_event", "13"))

    def test_ndk_empty_params(self) -> None:
        """NDK's empty image/url/name/perms mean absent."""
        uri = parse_nostrconnect_uri(
            f"nostrconnect://{PK}?image=&url=&name=&perms=&secret=abc&relay=wss%3A%2F%2Fr.example"
        )
        self.assertEqual(uri, NostrConnectURI(PK, ("wss://r.example",), "abc"))

    def test_rust_nostr_raw_metadata(self) -> None:
        """Raw JSON metadata with spaces, & and # inside values is read whole."""
        uri = parse_nostrconnect_uri(
            f'nostrconnect://{PK}?metadata={{"name":"Rust App","url":"https://a.example/#x&y=1",'
            '"description":"d","icons":["https://a.example/i.png"]}&relay=wss://r.example&secret=s'
        )
        self.assertEqual(uri.name, "Rust App")
        self.assertEqual(uri.url, "https://a.example/#x&y=1")
        self.assertEqual(uri.image, "https://a.example/i.png")
        self.assertEqual(uri.relays, ("wss://r.example",))
        self.assertEqual(uri.secret, "s")

    def test_encoded_metadata_with_perms(self) -> None:
        """Encoded legacy metadata supplies perms as a string or a list; params win over it."""
        as_string = parse_nostrconnect_uri(
            f"nostrconnect://{PK}?relay=wss://r.example&metadata=%7B%22name%22%3A%22A%22%2C"
            "%22perms%22%3A%22sign_event%3A1%2Cping%22%7D"
        )
        self.assertEqual((as_string.name, as_string.perms), ("A", ("sign_event:1", "ping")))
        self.assertIsNone(as_string.secret)
        as_list = parse_nostrconnect_uri(
            f'nostrconnect://{PK}?relay=wss://r.example&metadata={{"perms":["nip04_encrypt",3]}}'
            "&name=Param"
        )
        self.assertEqual((as_list.name, as_list.perms), ("Param", ("nip04_encrypt",)))

    def test_rejects(self) -> None:
        """No relay, broken metadata JSON or a bad key are InvalidURI."""
        for text in (
            f"nostrconnect://{PK}?secret=x",
            f"nostrconnect://{PK}?relay=wss://r.example&metadata={{broken",
            f'nostrconnect://{PK}?relay=wss://r.example&metadata={{"a":1}}x',
            f"nostrconnect://{PK}?relay=wss://r.example&metadata=%5B1%5D",
            f"nostrconnect://{PK}?relay=wss://r.example&metadata=%7Bx",
            f"nostrconnect://{OFF_CURVE}?relay=wss://r.example",
            f"bunker://{PK}?relay=wss://r.example",
        ):
            with self.assertRaises(InvalidURI, msg=text):
                parse_nostrconnect_uri(text)

    def test_constructor_validates(self) -> None:
        """Non-string metadata or perms are refused."""
        with self.assertRaises(InvalidURI):
            NostrConnectURI(PK, ("wss://r.example",), name=5)  # type: ignore[arg-type]
        with self.assertRaises(InvalidURI):
            NostrConnectURI(PK, ("wss://r.example",), perms="ping")  # type: ignore[arg-type]

    def test_repr_hides_secret(self) -> None:
        """The secret never appears in repr."""
        self.assertNotIn("0s8j2djs", repr(parse_nostrconnect_uri(SPEC_NOSTRCONNECT)))

    @given(
        st.lists(relay_urls, min_size=1, max_size=3),
        st.none() | nonempty_texts,
        st.lists(perm_items, max_size=4, unique=True),
        st.none() | nonempty_texts,
        st.none() | nonempty_texts,
    )
    def test_round_trip(
        self,
        relays: list[str],
        secret: str | None,
        perms: list[str],
        name: str | None,
        url: str | None,
    ) -> None:
        """Any URI survives to_string/parse."""
        uri = NostrConnectURI(PK, tuple(relays), secret, tuple(perms), name, url, name)
        self.assertEqual(parse_nostrconnect_uri(uri.to_string()), uri)

    @given(st.text(max_size=160))
    def test_garbage(self, query: str) -> None:
        """Arbitrary query text parses or raises InvalidURI, nothing else."""
        with contextlib.suppress(InvalidURI):
            parse_nostrconnect_uri(f"nostrconnect://{PK}?{query}")
