"""The Autobahn client factory for one relay: protocol options, owner injection, clock.

Autobahn schedules its handshake, ping and close timers through ``factory._batched_timer``,
which txaio binds to the *global* reactor. We replace it with :class:`ClockTimer` on the
injected clock, so that the handshake timeout and autoPing run on ``task.Clock`` in tests and
are cancelled with the connection (no dirty reactor). Batching only pays off with thousands of
connections; we hold a handful.
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

from keycast_tw import __version__
from keycast_tw.relay.options import RelayOptions
from keycast_tw.relay.protocol import RelayClientProtocol, RelayConnectionOwner


class ClockTimer:
    """The subset of txaio's IBatchedTimer that Autobahn uses, on an injected clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, func, *args, **kwargs)


class RelayClientFactory(WebSocketClientFactory):
    protocol = RelayClientProtocol
    # ClientService starts and stops the factory on every attempt; the relay logs its own
    # connect, drop and retry lines, so Twisted's "Starting factory" pairs are only noise.
    noisy = False

    def __init__(
        self, url: str, *, owner: RelayConnectionOwner, clock: IReactorTime, options: RelayOptions
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            url=url, reactor=clock, useragent=f"keycast-tw/{__version__}"
        )
        self._batched_timer = ClockTimer(clock)
        self.owner = owner
        self._clock = clock
        self._close_timeout = options.close_timeout
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            openHandshakeTimeout=options.handshake_timeout,
            autoPingInterval=options.auto_ping_interval,
            autoPingTimeout=options.auto_ping_timeout,
            maxMessagePayloadSize=options.max_message_size,
            maxFramePayloadSize=options.max_message_size,
            # After a closing handshake, Autobahn would wait for the relay to drop TCP on a
            # timer of txaio's global reactor; close_timeout on the injected clock bounds that
            # wait instead (the pool's stop, RelayClientProtocol.onCloseFrame).
            serverConnectionDropTimeout=0,
        )

    def buildProtocol(self, addr: IAddress | None) -> RelayClientProtocol:
        connection = cast(RelayClientProtocol, super().buildProtocol(addr))
        connection.owner = self.owner
        connection.clock = self._clock
        connection.close_timeout = self._close_timeout
        return connection
