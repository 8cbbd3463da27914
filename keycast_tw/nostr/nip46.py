"""NIP-46 remote signing: request/response messages and the bunker:// and nostrconnect:// URIs.

The parsers are deliberately liberal because three client families speak different dialects
(see shared/reference/nostr-protocol.md §6-7): old clients send ``sign_event`` templates as JSON
objects instead of strings and numeric ids; NDK emits empty nostrconnect parameters; rust-nostr
emits a raw, unencoded ``metadata={...}`` JSON blob. The builders are strict: a ``bunker://``
URI only contains characters nostr-tools' ``BUNKER_REGEX`` accepts, and replies always carry a
string ``result`` (``"error"`` alongside ``error``), which every client can parse.

Nothing here reveals secrets: the reprs of requests, responses and URIs omit params, results and
connect secrets, and error messages never quote the input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote_plus, urlsplit

import orjson

from keycast_tw.nostr.errors import InvalidKey, InvalidURI, MalformedRequest, NostrError
from keycast_tw.nostr.keys import parse_pubkey

__all__ = [
    "KIND",
    "MAX_REQUEST_ID_LENGTH",
    "BunkerURI",
    "NostrConnectURI",
    "Request",
    "Response",
    "build_request",
    "error_json",
    "parse_bunker_uri",
    "parse_nostrconnect_uri",
    "parse_perms",
    "parse_request",
    "parse_response",
    "response_json",
]

KIND: Final = 24133
#: Longest request id (characters) that parse_request accepts. Real clients send short random
#: ids (nostr-tools "<prefix>-<serial>", NDK 5-6 base-36 characters, rust-nostr a decimal u32);
#: the reply repeats the id, and a huge one could not even fit an encrypted error reply.
MAX_REQUEST_ID_LENGTH: Final = 256
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_JSON_DECODER: Final = json.JSONDecoder()


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Request:
    """A decrypted request ``{"id", "method", "params"}`` with every param as a string."""

    id: str
    method: str
    params: tuple[str, ...]

    def __repr__(self) -> str:
        # Params carry plaintexts and connect secrets: show only how many there are.
        return f"Request(id={self.id!r}, method={self.method!r}, params=<{len(self.params)}>)"


@dataclass(frozen=True, slots=True, repr=False)
class Response:
    """A decrypted response; ``error`` is set on failure (``result`` is then often "error")."""

    id: str
    result: str | None
    error: str | None

    def __repr__(self) -> str:
        shown = "None" if self.result is None else f"<{len(self.result)} chars>"
        return f"Response(id={self.id!r}, result={shown}, error={self.error!r})"


def _read_id(value: object) -> str | None:
    """Request ids are strings; integers (some old clients) are accepted as their decimal text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _param(value: object) -> str:
    """Strings pass through; null is an absent value (""); anything else is JSON-stringified.

    JavaScript clients that put ``undefined`` in the params array send ``null``, and pre-2024
    clients sent the sign_event template as an object.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode("utf-8")


def _load_object(plaintext: str, what: str) -> dict[str, Any]:
    if not isinstance(plaintext, str | bytes):
        raise MalformedRequest(f"{what} must be JSON text")
    try:
        data = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise MalformedRequest(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return data


def parse_request(plaintext: str) -> Request:
    """Parse a decrypted request; MalformedRequest (with ``request_id`` when readable) otherwise.

    An id over MAX_REQUEST_ID_LENGTH characters counts as unreadable: no reply can echo it.
    """
    data = _load_object(plaintext, "request")
    request_id = _read_id(data.get("id"))
    if request_id is None:
        raise MalformedRequest("request id must be a string")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise MalformedRequest("request id is too long")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise MalformedRequest("request method must be a non-empty string", request_id)
    params = data.get("params")
    if params is None:
        params = []
    if not isinstance(params, list):
        raise MalformedRequest("request params must be an array", request_id)
    return Request(request_id, method, tuple(_param(value) for value in params))


def _dumps(message: dict[str, Any]) -> str:
    try:
        return orjson.dumps(message).decode("utf-8")
    except orjson.JSONEncodeError:
        raise NostrError("message strings must be valid Unicode") from None


def build_request(id: str, method: str, params: Iterable[str]) -> str:
    """The JSON text of a request, as a client sends it before encryption."""
    return _dumps({"id": id, "method": method, "params": list(params)})


def response_json(request_id: str, result: str) -> str:
    """A success reply ``{"id", "result"}``; ``error`` is omitted, as clients expect."""
    return _dumps({"id": request_id, "result": result})


def error_json(request_id: str, error: str) -> str:
    """A failure reply ``{"id", "result": "error", "error"}``, readable by every client family."""
    return _dumps({"id": request_id, "result": "error", "error": error})


def _optional_text(data: dict[str, Any], key: str, request_id: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedRequest(f"response {key} must be a string", request_id)


def parse_response(plaintext: str) -> Response:
    """Parse a decrypted response; MalformedRequest when it is not one."""
    data = _load_object(plaintext, "response")
    response_id = _read_id(data.get("id"))
    if response_id is None:
        raise MalformedRequest("response id must be a string")
    result = _optional_text(data, "result", response_id)
    error = _optional_text(data, "error", response_id)
    return Response(response_id, result, error)


def parse_perms(text: str) -> tuple[tuple[str, str | None], ...]:
    """Split a permission list: ``"sign_event:1,nip44_encrypt"`` gives
    ``(("sign_event", "1"), ("nip44_encrypt", None))``.

    Blank items are dropped, duplicates kept once; unknown methods are returned as they are and
    left to the policy to ignore.
    """
    items: dict[tuple[str, str | None], None] = {}
    for item in text.split(",") if isinstance(text, str) else ():
        method, _, param = item.partition(":")
        method, param = method.strip(), param.strip()
        if method:
            items[(method, param or None)] = None
    return tuple(items)


# --- URIs -----------------------------------------------------------------------------------


def _encode(value: str) -> str:
    """Percent-encode everything outside [A-Za-z0-9_.-], the part of BUNKER_REGEX that is safe.

    ``quote`` leaves ``~`` alone, which nostr-tools' regex does not accept.
    """
    return quote(value, safe="").replace("~", "%7E")


def _check_pubkey(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidURI(f"{what} must be 64 lowercase hex characters")
    try:
        parse_pubkey(value)
    except InvalidKey:
        raise InvalidURI(f"{what} is not a valid public key") from None
    return value


def _check_relays(relays: Sequence[str]) -> tuple[str, ...]:
    if isinstance(relays, str) or not relays:
        raise InvalidURI("at least one relay is required")
    for url in relays:
        if not isinstance(url, str) or any(ord(char) <= 32 or ord(char) == 127 for char in url):
            raise InvalidURI("relay must be a ws:// or wss:// URL")
        try:
            parts = urlsplit(url)
            valid = parts.scheme.lower() in ("ws", "wss") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise InvalidURI("relay must be a ws:// or wss:// URL")
    return tuple(dict.fromkeys(relays))


def _optional(value: object, what: str) -> str | None:
    """Optional URI values: an empty string means absent (NDK writes ``name=&url=``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidURI(f"{what} must be a string")
    return value


def _parse_query(query: str) -> list[tuple[str, str]]:
    """Split a query with form-encoding rules (``+`` is a space), tolerating raw metadata JSON.

    rust-nostr writes ``metadata={"name":"My App","url":"https://a.b/#x&y"}`` unencoded; a
    generic parser would cut that at ``&`` or ``#``, so a value starting with ``{`` after
    ``metadata=`` is read as one JSON object.
    """
    pairs: list[tuple[str, str]] = []
    position, size = 0, len(query)
    while position < size:
        end = query.find("&", position)
        end = size if end < 0 else end
        equals = query.find("=", position, end)
        value_start = end if equals < 0 else equals + 1
        key = unquote_plus(query[position : end if equals < 0 else equals])
        if key == "metadata" and query.startswith("{", value_start):
            try:
                _, end = _JSON_DECODER.raw_decode(query, value_start)
            except ValueError:
                raise InvalidURI("metadata is not valid JSON") from None
            if end < size and query[end] != "&":
                raise InvalidURI("metadata is not valid JSON")
            value = query[value_start:end]
        else:
            value = unquote_plus(query[value_start:end])
        if key:
            pairs.append((key, value))
        position = end + 1
    return pairs


def _split_uri(text: str, scheme: str) -> tuple[str, list[tuple[str, str]]]:
    """Return the lowercase pubkey after ``scheme://`` and the query pairs."""
    prefix = f"{scheme}://"
    if not isinstance(text, str) or text.strip()[: len(prefix)].lower() != prefix:
        raise InvalidURI(f"URI must start with {prefix}")
    authority, _, query = text.strip()[len(prefix) :].partition("?")
    pubkey = _check_pubkey(authority.rstrip("/").lower(), "URI public key")
    return pubkey, _parse_query(query)


def _values(pairs: list[tuple[str, str]], key: str) -> list[str]:
    """All non-empty values of ``key``: NDK sends empty parameters that mean "absent"."""
    return [value for name, value in pairs if name == key and value]


@dataclass(frozen=True, slots=True, repr=False)
class BunkerURI:
    """``bunker://<remote-signer-pubkey>?relay=...&secret=...``, made by the signer for a client."""

    pubkey: str
    relays: tuple[str, ...]
    secret: str | None = None

    def __post_init__(self) -> None:
        _check_pubkey(self.pubkey, "bunker public key")
        object.__setattr__(self, "relays", _check_relays(self.relays))
        object.__setattr__(self, "secret", _optional(self.secret, "secret"))

    def to_string(self) -> str:
        """The URI, every value percent-encoded so that nostr-tools' BUNKER_REGEX matches it."""
        query = [f"relay={_encode(relay)}" for relay in self.relays]
        if self.secret is not None:
            query.append(f"secret={_encode(self.secret)}")
        return f"bunker://{self.pubkey}?{'&'.join(query)}"

    def __repr__(self) -> str:
        secret = "None" if self.secret is None else "<hidden>"
        return f"BunkerURI(pubkey={self.pubkey!r}, relays={self.relays!r}, secret={secret})"


def parse_bunker_uri(text: str) -> BunkerURI:
    """Parse a bunker URI: relays encoded or plain, repeated; secret optional. InvalidURI."""
    pubkey, pairs = _split_uri(text, "bunker")
    secrets = _values(pairs, "secret")
    return BunkerURI(pubkey, tuple(_values(pairs, "relay")), secrets[0] if secrets else None)


@dataclass(frozen=True, slots=True, repr=False)
class NostrConnectURI:
    """``nostrconnect://<client-pubkey>?relay=...&secret=...&perms=...&name=...``, from a client.

    ``secret`` is None when absent (pre-2024-11 clients); the engine decides whether to accept
    that. ``perms`` holds the raw items; ``parse_perms(",".join(uri.perms))`` splits them.
    """

    client_pubkey: str
    relays: tuple[str, ...]
    secret: str | None = None
    perms: tuple[str, ...] = field(default=())
    name: str | None = None
    url: str | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        _check_pubkey(self.client_pubkey, "client public key")
        object.__setattr__(self, "relays", _check_relays(self.relays))
        for key in ("secret", "name", "url", "image"):
            object.__setattr__(self, key, _optional(getattr(self, key), key))
        perms: object = self.perms
        if not isinstance(perms, list | tuple) or not all(isinstance(p, str) for p in perms):
            raise InvalidURI("perms must be a sequence of strings")
        object.__setattr__(self, "perms", tuple(perms))

    def to_string(self) -> str:
        """The URI in the current (2024-11+) form with separate parameters."""
        query = [f"relay={_encode(relay)}" for relay in self.relays]
        if self.secret is not None:
            query.append(f"secret={_encode(self.secret)}")
        if self.perms:
            query.append(f"perms={_encode(','.join(self.perms))}")
        for key in ("name", "url", "image"):
            value = getattr(self, key)
            if value is not None:
                query.append(f"{key}={_encode(value)}")
        return f"nostrconnect://{self.client_pubkey}?{'&'.join(query)}"

    def __repr__(self) -> str:
        secret = "None" if self.secret is None else "<hidden>"
        return (
            f"NostrConnectURI(client_pubkey={self.client_pubkey!r}, relays={self.relays!r}, "
            f"secret={secret}, perms={self.perms!r}, name={self.name!r})"
        )


def _metadata(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The legacy ``metadata`` JSON object, or {} when absent."""
    blobs = _values(pairs, "metadata")
    if not blobs:
        return {}
    try:
        metadata = json.loads(blobs[0])
    except ValueError:
        raise InvalidURI("metadata is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidURI("metadata must be a JSON object")
    return metadata


def _perm_items(values: Iterable[str]) -> tuple[str, ...]:
    items = (item.strip() for value in values for item in value.split(","))
    return tuple(dict.fromkeys(item for item in items if item))


def _first_text(*candidates: object) -> str | None:
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def parse_nostrconnect_uri(text: str) -> NostrConnectURI:
    """Parse a nostrconnect URI in the current form, NDK's empty-parameter form or rust-nostr's
    legacy ``metadata={...}`` JSON form (raw or encoded); InvalidURI when it is unusable."""
    client_pubkey, pairs = _split_uri(text, "nostrconnect")
    metadata = _metadata(pairs)
    perms = _perm_items(_values(pairs, "perms"))
    if not perms:
        legacy = metadata.get("perms")
        if isinstance(legacy, str):
            perms = _perm_items([legacy])
        elif isinstance(legacy, list):
            perms = _perm_items(item for item in legacy if isinstance(item, str))
    icons = metadata.get("icons")
    first_icon = icons[0] if isinstance(icons, list) and icons else None
    secrets = _values(pairs, "secret")

    def param(key: str) -> str | None:
        values = _values(pairs, key)
        return values[0] if values else None

    return NostrConnectURI(
        client_pubkey=client_pubkey,
        relays=tuple(_values(pairs, "relay")),
        secret=secrets[0] if secrets else None,
        perms=perms,
        name=_first_text(param("name"), metadata.get("name")),
        url=_first_text(param("url"), metadata.get("url")),
        image=_first_text(param("image"), metadata.get("image"), first_icon),
    )
