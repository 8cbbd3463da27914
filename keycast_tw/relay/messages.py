"""NIP-01/NIP-42 relay messages: strict parsing of what relays send, encoding of what we send.

Parsing is deliberately strict about shapes and lenient about nothing else: anything that is
not one of the messages we act on becomes :class:`MalformedMessage` with a short, fixed reason
(never the frame itself, which may carry other people's data), so the caller can count and
rate-limit it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

EVENT_ID = re.compile(r"[0-9a-f]{64}")
MAX_SUBSCRIPTION_ID = 64

#: What the pool reports to ``relay_message(url, kind)`` observers, one per frame received: the
#: message types (an ``OK`` that refuses our event is ``rejected``) and the unusable frames. A
#: fixed vocabulary, so that it can be a metrics label (keycast_tw.metrics).
RECEIVED_KINDS = frozenset(
    {
        "event",
        "ok",
        "rejected",
        "eose",
        "closed",
        "notice",
        "auth",
        "malformed",
        "binary",
        "oversize",
    }
)


class MalformedMessage(ValueError):
    """A relay frame we cannot use; ``reason`` is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EventMessage:
    subscription_id: str
    event: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.event["id"])


@dataclass(frozen=True)
class OkMessage:
    event_id: str
    accepted: bool
    message: str


@dataclass(frozen=True)
class EoseMessage:
    subscription_id: str


@dataclass(frozen=True)
class ClosedMessage:
    subscription_id: str
    message: str


@dataclass(frozen=True)
class NoticeMessage:
    message: str


@dataclass(frozen=True)
class AuthChallenge:
    challenge: str


RelayMessage = (
    EventMessage | OkMessage | EoseMessage | ClosedMessage | NoticeMessage | AuthChallenge
)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} is not a string")
    return value


def parse_relay_message(payload: bytes) -> RelayMessage:
    """Decode one text frame from a relay into a typed message."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedMessage("invalid JSON") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise MalformedMessage("not a JSON array with a type")
    kind, args = data[0], data[1:]
    if kind == "EVENT":
        if len(args) != 2:
            raise MalformedMessage("EVENT needs a subscription id and an event")
        sub_id = _text(args[0], "EVENT subscription id")
        event = args[1]
        if not isinstance(event, dict):
            raise MalformedMessage("EVENT payload is not an object")
        event_id = event.get("id")
        if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
            raise MalformedMessage("EVENT id is not 64 lowercase hex")
        return EventMessage(sub_id, event)
    if kind == "OK":
        if len(args) < 2 or not isinstance(args[1], bool):
            raise MalformedMessage("OK needs an event id and a boolean")
        message = args[2] if len(args) > 2 and isinstance(args[2], str) else ""
        return OkMessage(_text(args[0], "OK event id"), args[1], message)
    if kind == "EOSE":
        if len(args) != 1:
            raise MalformedMessage("EOSE needs a subscription id")
        return EoseMessage(_text(args[0], "EOSE subscription id"))
    if kind == "CLOSED":
        if not args:
            raise MalformedMessage("CLOSED needs a subscription id")
        message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        return ClosedMessage(_text(args[0], "CLOSED subscription id"), message)
    if kind == "NOTICE":
        if len(args) != 1:
            raise MalformedMessage("NOTICE needs one message")
        return NoticeMessage(_text(args[0], "NOTICE message"))
    if kind == "AUTH":
        if len(args) != 1:
            raise MalformedMessage("AUTH needs one challenge")
        return AuthChallenge(_text(args[0], "AUTH challenge"))
    raise MalformedMessage("unknown message type")


def machine_prefix(message: str) -> str:
    """The NIP-01 machine-readable prefix of an OK/CLOSED message (``auth-required`` ...)."""
    prefix, sep, _ = message.partition(":")
    return prefix.strip() if sep else ""


def encode_req(subscription_id: str, filters: list[dict[str, Any]]) -> bytes:
    if not 0 < len(subscription_id) <= MAX_SUBSCRIPTION_ID:
        raise ValueError("subscription ids are 1..64 characters")
    return orjson.dumps(["REQ", subscription_id, *filters])


def encode_close(subscription_id: str) -> bytes:
    return orjson.dumps(["CLOSE", subscription_id])


def encode_event(event: dict[str, Any]) -> bytes:
    return orjson.dumps(["EVENT", event])


def encode_auth(event: dict[str, Any]) -> bytes:
    return orjson.dumps(["AUTH", event])
