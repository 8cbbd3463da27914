"""The Autobahn protocol for one relay connection: frames in, frames out, nothing else.

All decisions live in the owner (:class:`keycast_tw.relay.relay.Relay`); this class only turns
Autobahn callbacks into owner calls and makes sending safe on a closing connection. Owner calls
are fenced so that a bug there is logged, never raised into Autobahn (which would drop the
connection and hide the cause).
"""

from __future__ import annotations

from typing import Any, Protocol

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure


class RelayConnectionOwner(Protocol):
    """What a :class:`RelayClientProtocol` reports to."""

    def ws_open(self, connection: RelayClientProtocol) -> None: ...

    def ws_message(self, connection: RelayClientProtocol, payload: bytes, binary: bool) -> None: ...

    def ws_alive(self, connection: RelayClientProtocol) -> None: ...

    def ws_oversize(self, connection: RelayClientProtocol, size: int) -> None: ...

    def ws_closed(
        self, connection: RelayClientProtocol, opened: bool, code: int | None, reason: str | None
    ) -> None: ...


#: Module-level on purpose: Autobahn's protocol uses ``self.log`` (a txaio logger) internally,
#: and a class attribute here would shadow it.
log = Logger()

#: A relay's answer to the HTTP upgrade is a few hundred bytes. Autobahn buffers it without a
#: bound and rescans the whole buffer on every read, so a relay streaming an endless header
#: could hold the reactor for seconds (its handshake timer cannot fire meanwhile).
MAX_HANDSHAKE_BYTES = 16 * 1024


class RelayClientProtocol(WebSocketClientProtocol):
    owner: RelayConnectionOwner
    #: Set by the factory: the injected clock, and how long a relay that sent us a close frame
    #: gets to drop TCP before we do.
    clock: IReactorTime
    close_timeout: float
    opened = False
    #: Why the transport went away when that says more than Autobahn's onClose (which calls
    #: a failed TLS verification just an unclean close); a plain close or loss is left out.
    lost_reason: str | None = None
    _unclosed_drop: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.state == self.STATE_CLOSED:
            return  # dropped by us: Autobahn would only buffer what is still in flight
        if self.state == self.STATE_CONNECTING and len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            self.lost_reason = f"handshake response over {MAX_HANDSHAKE_BYTES} bytes"
            self.dropConnection(abort=True)
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._unclosed_drop is not None and self._unclosed_drop.active():
            self._unclosed_drop.cancel()
        self._unclosed_drop = None
        if self.lost_reason is None and not reason.check(  # type: ignore[no-untyped-call]
            ConnectionDone, ConnectionLost
        ):
            self.lost_reason = reason.getErrorMessage()
        super().connectionLost(reason)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """Answer the relay's close frame (Autobahn does), then bound the wait for its TCP drop.

        As a client, Autobahn leaves dropping TCP to the server after the closing handshake;
        its own timer for that runs on txaio's global reactor and is disabled (see the
        factory). A relay that never drops would leave the connection CLOSING, still counted
        as connected and swallowing sends, until a keep-alive ping noticed, or for ever with
        pings off.
        """
        handled = super().onCloseFrame(code, reasonRaw)
        if self.state != self.STATE_CLOSED and self._unclosed_drop is None:
            self._unclosed_drop = self.clock.callLater(self.close_timeout, self._drop_unclosed)
        return handled

    def _drop_unclosed(self) -> None:
        self._unclosed_drop = None
        if self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def onOpen(self) -> None:
        self.opened = True
        with log.failuresHandled("Relay owner failed on open"):
            self.owner.ws_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        with log.failuresHandled("Relay owner failed on a message"):
            self.owner.ws_message(self, payload, isBinary)

    def onAutoPong(self, *args: Any) -> None:
        with log.failuresHandled("Relay owner failed on a pong"):
            self.owner.ws_alive(self)

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # Autobahn's documented hook for maxMessagePayloadSize; it then drops the connection
        # (close code 1006 locally), so this is the only place that knows why.
        with log.failuresHandled("Relay owner failed on an oversize message"):
            self.owner.ws_oversize(self, msg_size)
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        with log.failuresHandled("Relay owner failed on close"):
            self.owner.ws_closed(self, self.opened, code, reason)

    def send_text(self, payload: bytes) -> bool:
        """Send one text frame; False (never an exception) if the connection is not open."""
        if self.state != self.STATE_OPEN:
            return False
        try:
            self.sendMessage(payload, isBinary=False)  # type: ignore[no-untyped-call]
        except Disconnected:
            return False
        return True

    def close_with(self, code: int, reason: str) -> None:
        """Start the WebSocket closing handshake (on shutdown), so the relay sees a close frame.

        A connection that is already closing is left to finish; ``onClose`` follows either way.
        """
        if self.state == self.STATE_OPEN:
            self.sendClose(code=code, reason=reason)
