"""Relay URL -> Twisted client endpoint, with TLS verification for ``wss://``.

One function, so that the pool (and ops) never build endpoints ad hoc. ``wss://`` uses
``optionsForClientTLS``: the certificate chain is checked against the system trust store (or an
injected trust root in tests) and the hostname through service-identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

#: TCP connect timeout; the WebSocket (and TLS) handshake has its own, see RelayOptions.
CONNECT_TIMEOUT = 30.0


class RelayURLError(ValueError):
    """A relay URL we cannot connect to (wrong scheme, no host, bad port)."""


@dataclass(frozen=True)
class RelayAddress:
    secure: bool
    host: str
    port: int


def parse_relay_url(url: str) -> RelayAddress:
    """Split a ``ws://`` or ``wss://`` URL into what an endpoint needs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RelayURLError(f"invalid relay URL {url!r}") from None
    if parts.scheme not in ("ws", "wss"):
        raise RelayURLError(f"relay URL {url!r} must start with ws:// or wss://")
    if not parts.hostname:
        raise RelayURLError(f"relay URL {url!r} has no host")
    secure = parts.scheme == "wss"
    return RelayAddress(secure, parts.hostname, port or (443 if secure else 80))


def endpoint_for_url(
    reactor: IReactorTime,
    url: str,
    *,
    trust_root: IOpenSSLTrustRoot | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> IStreamClientEndpoint:
    """The endpoint for one relay; ``trust_root=None`` means the platform's trust store."""
    address = parse_relay_url(url)
    tcp = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    if not address.secure:
        return tcp
    tls_options = optionsForClientTLS(address.host, trustRoot=trust_root)
    return wrapClientTLS(tls_options, tcp)


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Passes connection attempts through and tells ``on_failure`` why one failed.

    ClientService swallows the failure of an attempt (DNS, refused, timeout) and hands its
    retry policy only a count, so without this the log would say that a relay is retried but
    never why.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, on_failure: Callable[[str], None]
    ) -> None:
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect through the wrapped endpoint, reporting a failure and passing it on."""
        attempt = self._endpoint.connect(protocolFactory)
        attempt.addErrback(self._report)
        return attempt

    def _report(self, failure: Failure) -> Failure:
        self._on_failure(failure.getErrorMessage())
        return failure
