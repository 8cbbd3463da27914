"""``keycast status`` and ``keycast check``: ask a running daemon over its health endpoint.

``authorize`` and ``connect`` use the same target to ask the daemon for its relays
(``ask_relays``), which it may have from its own command line, out of this process's sight.

Blocking http.client on purpose: one or two requests, and ``check`` runs from cron where a
reactor would add nothing. The URL is derived from the same --health / KEYCAST_HEALTH / PORT
setting the daemon listens on, so on one host no extra option is needed; --url covers a daemon
elsewhere (another container) or an endpoint type we cannot dial (ssl, systemd).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from keycast_tw.cli.context import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, Context
from keycast_tw.cli.output import timestamp, to_json
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.config import check_relay_url

EXIT_UNREACHABLE = 2
#: How long ``authorize``/``connect`` wait for the daemon's relays before using the defaults.
RELAY_LOOKUP_TIMEOUT = 2.0


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    status = add_command(
        commands, "status", common, show_status, help="summarise the running daemon's /status",
        description="Read /status from the daemon's health endpoint (--health, KEYCAST_HEALTH "
        "or PORT, as the daemon) and print a short summary.",
    )
    status.add_argument(
        "--json", action="store_true", help="print the daemon's JSON as is (raw epoch seconds)"
    )
    check = add_command(
        commands, "check", common, check_daemon, help="one-line health check for cron and monitors",
        description="Exit 0 when the daemon is alive and ready, 1 when it answers but is not "
        "ready or not healthy, 2 when it cannot be reached. Prints one line.",
    )
    for parser in (status, check):
        parser.add_argument("--url", metavar="URL", help="the daemon's base URL instead")


class Unreachable(Exception):
    """No HTTP answer: connection refused, timeout, or a broken response."""


@dataclass(frozen=True)
class Target:
    """Where the daemon's HTTP server is: a host and port, or a UNIX socket path."""

    description: str
    host: str = "127.0.0.1"
    port: int = 80
    unix_path: str | None = None
    tls: bool = False

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return _UnixConnection(self.unix_path, timeout)
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


_UNESCAPED_COLON = re.compile(r"(?<!\\):")
# A server on every interface is reached on loopback.
_ANY_ADDRESS = {"": None, "0.0.0.0": "127.0.0.1", "::": "::1", "::0": "::1"}  # noqa: S104


def target_from_endpoint(endpoint: str) -> Target:
    """Where to dial a server listening on ``endpoint`` (a Twisted server endpoint string)."""
    fields = [f.replace("\\:", ":") for f in _UNESCAPED_COLON.split(endpoint)]
    kind, args = fields[0], fields[1:]
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    if kind == "unix" and positional:
        return Target(endpoint, unix_path=positional[0])
    if kind in ("tcp", "tcp6") and positional and positional[0].isdigit():
        interface = options.get("interface", "")
        host = _ANY_ADDRESS.get(interface, interface)
        if host is None:
            host = "::1" if kind == "tcp6" else "127.0.0.1"
        return Target(endpoint, host=host, port=int(positional[0]))
    raise CliError(
        f"cannot dial the health endpoint {endpoint!r} from here; give the daemon's URL "
        "with --url http://HOST:PORT",
        EXIT_USAGE,
    )


def target_from_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url must be http://HOST[:PORT] or https://..., not {url!r}", EXIT_USAGE)
    tls = parts.scheme == "https"
    return Target(url, host=parts.hostname, port=parts.port or (443 if tls else 80), tls=tls)


def fetch(target: Target, path: str, timeout: float) -> tuple[int, bytes]:
    """GET ``path``; Unreachable when there is no complete HTTP answer."""
    connection = target.connection(timeout)
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        return response.status, response.read(1024 * 1024)
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(str(error) or type(error).__name__) from None
    finally:
        connection.close()


def daemon_target(ctx: Context, url: str | None) -> Target:
    """Where the daemon answers: ``url`` (--url) or the --health / KEYCAST_HEALTH / PORT setting."""
    if url:
        return target_from_url(url)
    return target_from_endpoint(ctx.config.health_endpoint)


def _target(ctx: Context, args: argparse.Namespace) -> Target:
    return daemon_target(ctx, args.url)


Fetch = Callable[[Target, str, float], tuple[int, bytes]]


def ask_relays(target: Target, timeout: float, fetcher: Fetch = fetch) -> tuple[str, ...]:
    """The relay URLs the daemon at ``target`` uses (``relays[].url`` of its /status).

    Unreachable when there is no answer or it names no usable relay: the caller then knows
    nothing about the daemon's relays and says so.
    """
    code, body = fetcher(target, "/status", timeout)
    status = _json(body)
    if code != 200 or not isinstance(status, dict):
        raise Unreachable(f"/status answered HTTP {code}")
    return relays_in_status(status)


def relays_in_status(status: dict[str, Any]) -> tuple[str, ...]:
    """``relays[].url`` of a /status document, valid relay URLs only, each once, in order."""
    entries = status.get("relays")
    if isinstance(entries, dict):  # a version that keys per-relay state by URL
        urls = list(entries)
    elif isinstance(entries, list):
        urls = [entry.get("url") for entry in entries if isinstance(entry, dict)]
    else:
        urls = []
    usable = []
    for url in urls:
        if not isinstance(url, str) or not url.isprintable():
            continue
        try:
            usable.append(check_relay_url(url))
        except ValueError:
            continue
    if not usable:
        raise Unreachable("its /status lists no relay")
    return tuple(dict.fromkeys(usable))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def show_status(ctx: Context, args: argparse.Namespace) -> int:
    target = _target(ctx, args)
    try:
        code, body = fetch(target, "/status", ctx.config.check_timeout)
    except Unreachable as error:
        raise CliError(
            f"cannot reach the daemon at {target.description}: {error}", EXIT_UNREACHABLE
        ) from None
    status = _json(body)
    if code != 200 or not isinstance(status, dict):
        raise CliError(f"the daemon answered /status with HTTP {code}", EXIT_FAILURE)
    if args.json:
        ctx.out(to_json(status))
        return EXIT_OK
    for line in summarize(status, now=ctx.clock()):
        ctx.out(line)
    return EXIT_OK


def summarize(status: dict[str, Any], *, now: float | None = None) -> list[str]:
    """A few readable lines from /status, whatever fields this daemon version reports.

    Scalars become ``name: value``; a mapping of scalars one line of ``k=v``; a list or
    mapping of mappings (per-relay state) one indented line per entry. Epoch seconds (a field
    named ``at`` or ``..._at``) print as UTC ISO-8601 with their age from ``now``, and
    durations (``seconds``, ``..._seconds``) rounded with a unit; ``--json`` keeps the raw
    numbers for scripts.
    """
    when = time.time() if now is None else now
    lines = []
    version = status.get("version", "?")
    uptime = status.get("uptime_seconds")
    lines.append(
        f"keycast-tw {version}, up {_duration(uptime)}"
        if isinstance(uptime, int | float) and not isinstance(uptime, bool)
        else f"keycast-tw {version}"
    )
    for name, value in status.items():
        if name in ("version", "uptime_seconds"):
            continue
        entries = _entries(value)
        if entries is not None:
            lines.append(f"{name}:")
            lines.extend(f"  {label}: {_pairs(entry, when)}" for label, entry in entries)
        elif isinstance(value, dict):
            lines.append(f"{name}: {_pairs(value, when)}")
        else:
            lines.append(f"{name}: {_field(name, value, when)}")
    return lines


def _entries(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [(str(v.get("url") or v.get("name") or i), v) for i, v in enumerate(value)]
    return None


def _pairs(mapping: dict[str, Any], now: float) -> str:
    return (
        ", ".join(f"{k}={_field(k, v, now)}" for k, v in mapping.items() if k != "url") or "-"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_YEAR_9999 = 253_402_300_800  # 10000-01-01: beyond it datetime cannot print the moment


def _field(name: str, value: Any, now: float) -> str:
    """``value`` as text; a timestamp or a duration (by its field name) made readable."""
    if name == "at" or name.endswith("_at"):
        if value is None:
            return "never"
        if _is_number(value) and 0 < value < _YEAR_9999:
            return f"{timestamp(int(value))} ({_age(now - value)})"
    if (name == "seconds" or name.endswith("_seconds")) and _is_number(value) and value >= 0:
        return _elapsed(value)
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _age(seconds: float) -> str:
    """``12s ago``, ``3h 5m ago``; ``in 4s`` for a moment ahead of this host's clock."""
    if seconds <= -1:
        return f"in {_duration(-seconds)}"
    return f"{_duration(max(seconds, 0))} ago"


def _elapsed(seconds: float) -> str:
    """A measured duration: ``2.4 ms``, ``350 ms``, ``1.5 s``, then as ``_duration``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return _duration(seconds)


def _duration(seconds: float) -> str:
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def check_daemon(ctx: Context, args: argparse.Namespace) -> int:
    target = _target(ctx, args)
    timeout = ctx.config.check_timeout
    try:
        health, _ = fetch(target, "/health", timeout)
        if health != 200:
            ctx.out(f"UNHEALTHY: /health answered HTTP {health} at {target.description}")
            return EXIT_FAILURE
        ready, body = fetch(target, "/ready", timeout)
    except Unreachable as error:
        ctx.out(f"UNREACHABLE: {target.description}: {error}")
        return EXIT_UNREACHABLE
    if ready == 200:
        ctx.out(f"OK: keycast daemon at {target.description} is ready")
        return EXIT_OK
    answer = _json(body)
    reasons = answer.get("reasons") if isinstance(answer, dict) else None
    detail = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) and reasons else ""
    ctx.out(f"NOT READY: {detail or f'/ready answered HTTP {ready}'}")
    return EXIT_FAILURE
