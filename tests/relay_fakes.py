"""Test doubles for keycast_tw.relay: a fake endpoint, in-memory relay servers, a recording hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.test import iosim
from zope.interface import implementer

from keycast_tw.relay.factory import ClockTimer


class FakeRelayServer(WebSocketServerProtocol):
    """An in-memory relay: records what the client sends, sends what the test says."""

    received: list[Any]
    #: The close code and reason the client sent, (None, None) if it sent no close frame.
    close_frame: tuple[int | None, str | None] | None = None

    def onConnect(self, request: Any) -> None:
        self.received = []
        self.factory.servers.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(orjson.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_frame = (self.remoteCloseCode, self.remoteCloseReason)

    def send(self, *message: Any) -> None:
        self.sendMessage(orjson.dumps(list(message)))

    def of_type(self, kind: str) -> list[list[Any]]:
        return [m for m in self.received if m and m[0] == kind]


class LingeringRelayServer(FakeRelayServer):
    """A relay that sends a close frame but never drops TCP afterwards."""

    def dropConnection(self, abort: bool = False) -> None:
        """Keep the TCP connection whatever the closing handshake says."""


def relay_server_factory(clock: IReactorTime) -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = FakeRelayServer
    factory._batched_timer = ClockTimer(clock)
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    factory.servers = []
    return factory


class DropBeforeHandshake(Protocol):
    """A relay (or proxy) that accepts TCP and hangs up on the HTTP upgrade request."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class RefuseHandshake(Protocol):
    """A relay behind a proxy that answers the upgrade with 503, as overloaded relays do."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


class Silent(Protocol):
    """Accepts TCP and never says a word (the handshake timeout must fire)."""


@dataclass
class Attempt:
    factory: IProtocolFactory
    deferred: Deferred[IProtocol]
    time: float
    pump: iosim.IOPump | None = None
    client: Any = None
    server: Any = None

    def refuse(self) -> None:
        # What the reactor reports for ECONNREFUSED (Twisted's error, not the builtin).
        self.deferred.errback(error.ConnectionRefusedError(111, "Connection refused"))

    def accept(self, server_factory: ServerFactory | WebSocketServerFactory) -> iosim.IOPump:
        """Complete TCP with a server protocol from ``server_factory`` and pump the greeting."""
        address = iosim.FakeAddress()
        client = self.factory.buildProtocol(address)
        server = server_factory.buildProtocol(address)
        assert client is not None and server is not None
        self.client, self.server = client, server
        client_tx = iosim.FakeTransport(client, isServer=False)
        server_tx = iosim.FakeTransport(server, isServer=True)
        self.pump = iosim.connect(server, server_tx, client, client_tx, greet=False)
        self.deferred.callback(client)
        self.pump.flush()
        return self.pump


@implementer(IStreamClientEndpoint)
@dataclass
class FakeEndpoint:
    """Records every connect() so that the test decides how each attempt ends."""

    clock: IReactorTime
    attempts: list[Attempt] = field(default_factory=list)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = Attempt(factory, Deferred(), self.clock.seconds())
        self.attempts.append(attempt)
        return attempt.deferred

    @property
    def times(self) -> list[float]:
        return [a.time for a in self.attempts]


def factory_of(protocol: type[Protocol]) -> ServerFactory:
    return ServerFactory.forProtocol(protocol)


class Observer:
    """Records every observer hook of the pool, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def relay_connected(self, url: str) -> None:
        self.calls.append(("connected", url))

    def relay_disconnected(self, url: str) -> None:
        self.calls.append(("disconnected", url))

    def relay_subscribed(self, url: str) -> None:
        self.calls.append(("subscribed", url))

    def relay_reconnect(self, url: str) -> None:
        self.calls.append(("reconnect", url))

    def relay_message(self, url: str, kind: str) -> None:
        self.calls.append(("message", url, kind))

    def response_published(self, event_id: str, accepted_by: int) -> None:
        self.calls.append(("published", event_id, accepted_by))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]
