"""The HTTP edge of the daemon: liveness, readiness, status and Prometheus metrics.

``/health`` is deliberately shallow: it is answered by the reactor thread, so it proves that the
process runs and the event loop turns, which is what a restart policy (Docker, Cloud Run's startup
probe, the runbook's curl) should act on. Everything a restart would not fix (no relay, DB not yet
open) belongs to ``/ready``, which load balancers and monitors read instead, and to ``/status``
for humans and ``keycast status``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from keycast_tw import __version__
from keycast_tw.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from keycast_tw.metrics import Metrics

#: Fragments of a field name that must never appear in an HTTP response, whatever the status
#: provider returns: a guard against a future status field that carries key material.
FORBIDDEN_KEY_FRAGMENTS = ("secret", "private", "privkey", "nsec", "password", "plaintext")

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


class UnsafeStatus(Exception):
    """The status dict holds a field that looks like key material; it is not served."""

    def __init__(self, path: str) -> None:
        super().__init__(f"status field {path!r} looks like a secret and is not served")
        self.path = path


def check_safe(value: object, path: str = "") -> None:
    """Raise :class:`UnsafeStatus` if ``value`` holds a secret-looking key or an nsec string.

    Only names and the nsec prefix are examined; the offending value is never put in the
    exception, so the error itself can be logged.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            where = f"{path}.{name}" if path else name
            if any(fragment in name.lower() for fragment in FORBIDDEN_KEY_FRAGMENTS):
                raise UnsafeStatus(where)
            check_safe(item, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_safe(item, f"{path}[{index}]")
    elif isinstance(value, str) and value.lower().startswith("nsec1"):
        raise UnsafeStatus(path)


def _header(request: Request, name: bytes, value: bytes) -> None:
    request.responseHeaders.setRawHeaders(name, [value])


def _json(request: Request, code: int, body: object) -> bytes:
    request.setResponseCode(code)
    _header(request, b"Content-Type", _JSON)
    return orjson.dumps(body)


def _text(request: Request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    _header(request, b"Content-Type", _TEXT)
    return body


class HealthApp:
    """Klein routes over callables supplied by the daemon; nothing here knows the service tree.

    ``status()`` returns a JSON-serialisable dict merged into ``/status``; ``readiness()``
    returns the reasons the daemon is not ready (empty when it is).
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        status: Callable[[], dict[str, Any]],
        readiness: Callable[[], list[str]],
        metrics: Metrics,
        version: str = __version__,
    ) -> None:
        self._clock = clock
        self._status = status
        self._readiness = readiness
        self._metrics = metrics
        self._version = version
        self._started = clock.seconds()

    def resource(self) -> IResource:
        """The twisted.web resource to serve (``Site(app.resource())``)."""
        resource: IResource = self.app.resource()
        return resource

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: Request) -> bytes:
        """Liveness: the reactor answered, so the process is alive."""
        _header(request, b"Cache-Control", b"no-store")
        return _text(request, 200, b"OK")

    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: Request) -> bytes:
        """Readiness: 200 when there is nothing to wait for, 503 with the reasons otherwise."""
        _header(request, b"Cache-Control", b"no-store")
        try:
            reasons = [str(reason) for reason in self._readiness()]
        except Exception:
            self.log.failure("Readiness check failed")
            reasons = ["readiness check failed"]
        if reasons:
            return _json(request, 503, {"ready": False, "reasons": reasons})
        return _json(request, 200, {"ready": True})

    @app.route("/status", methods=["GET", "HEAD"])
    def status(self, request: Request) -> bytes:
        """Version, uptime and the daemon's own status fields, checked for secrets."""
        _header(request, b"Cache-Control", b"no-store")
        body: dict[str, Any] = {
            "version": self._version,
            "uptime_seconds": round(max(self._clock.seconds() - self._started, 0.0), 3),
        }
        try:
            body.update(self._status())
            check_safe(body)
            return _json(request, 200, body)
        except UnsafeStatus as unsafe:
            self.log.error("Refusing to serve /status: {reason}", reason=str(unsafe))
        except Exception:
            self.log.failure("Status provider failed")
        return _json(request, 500, {"error": "status unavailable"})

    @app.route("/metrics", methods=["GET", "HEAD"])
    def metrics(self, request: Request) -> bytes:
        """Prometheus text exposition."""
        request.setResponseCode(200)
        _header(request, b"Content-Type", METRICS_CONTENT_TYPE.encode("ascii"))
        return self._metrics.render()

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        """A short plain-text 404 instead of werkzeug's HTML page."""
        return _text(cast(Request, request), 404, b"Not Found")

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        """Only GET and HEAD exist."""
        _header(cast(Request, request), b"Allow", b"GET, HEAD")
        return _text(cast(Request, request), 405, b"Method Not Allowed")
