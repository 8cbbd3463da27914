"""``keycast authorize``, ``connect``, ``authorizations`` and ``revoke``: who may use which key.

``authorize`` prints the bunker:// URI exactly once: the database keeps only a hash of its
connect secret, so neither ``authorizations`` nor anything else can show it again. ``connect``
is the other direction (the client made a nostrconnect:// URI); it never prints the client's
secret, which only the daemon's connect response carries back.

Both need the daemon's relays, and the daemon may have got them from its own command line
(``twistd keycast --relay ...``), which this process cannot see. So unless KEYCAST_RELAYS (or
BUNKER_RELAYS) tells this command too, they ask the running daemon's /status, found the way
``keycast status`` finds it; only when it cannot be asked do they fall back to the built-in
defaults, and say so: a URI naming relays the daemon does not use is never answered.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import segno

from keycast_tw.cli import daemon
from keycast_tw.cli.context import EXIT_OK, EXIT_USAGE, CliError, Context
from keycast_tw.cli.output import short, timestamp
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.cli.when import parse_when
from keycast_tw.config import DEFAULT_RELAYS, option_spec
from keycast_tw.nostr.nip19 import encode_npub
from keycast_tw.store import admin


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    authorize = add_command(
        commands, "authorize", common, authorize_key,
        help="let a client use a key; prints a bunker:// URI",
        description="Create an authorization for KEY (a key name, id or npub) and print its "
        "bunker:// URI. Give the URI to the client; it holds the connect secret and is shown "
        "only now.",
        epilog="WHEN is a duration from now (30d, 12h, 1w, 1d12h) or an ISO-8601 date/time "
        "(2030-01-31, 2030-01-31T18:00:00+02:00; UTC when no zone is given).",
    )
    authorize.add_argument("key", metavar="KEY", help="key name, id, npub or hex pubkey")
    authorize.add_argument(
        "--relay", metavar="URL", action="append", dest="uri_relays",
        help="relay to advertise in the URI (repeatable) [default: the daemon's relays: "
        "KEYCAST_RELAYS if set, else those the running daemon reports in its /status]",
    )
    authorize.add_argument("--policy", metavar="NAME", help="restrict clients to this policy")
    authorize.add_argument(
        "--max-uses", metavar="N", type=_max_uses, default=1,
        help="how many distinct clients may connect with the URI, or 'unlimited' [default 1]",
    )
    authorize.add_argument("--expires", metavar="WHEN", help="stop serving it at WHEN")
    authorize.add_argument("--label", metavar="TEXT", help="a note shown in listings")
    authorize.add_argument(
        "--same-key", action="store_true",
        help="use the user key as the bunker key (for old clients that assume they are equal)",
    )
    authorize.add_argument("--qr", action="store_true", help="also draw the URI as a QR code")

    connect = add_command(
        commands, "connect", common, connect_client,
        help="pair a client that shows a nostrconnect:// URI (QR code)",
        description="Create an authorization for KEY whose only client is the one that made "
        "URI (nostrconnect://<client pubkey>?relay=...&secret=...), and have the running daemon "
        "send it the connect response. The URI's relays must include one of the daemon's. Its "
        "perms= grant nothing: --policy decides what the client may do. URI '-' reads the URI "
        "from stdin (keeps its secret out of the process list).",
        epilog="WHEN is a duration from now (30d, 12h, 1w, 1d12h) or an ISO-8601 date/time "
        "(2030-01-31, 2030-01-31T18:00:00+02:00; UTC when no zone is given).",
    )
    connect.add_argument("key", metavar="KEY", help="key name, id, npub or hex pubkey")
    connect.add_argument("uri", metavar="URI", help="the client's nostrconnect:// URI, or '-'")
    connect.add_argument("--policy", metavar="NAME", help="restrict the client to this policy")
    connect.add_argument("--expires", metavar="WHEN", help="stop serving it at WHEN")
    connect.add_argument(
        "--label", metavar="TEXT", help="a note shown in listings [default: the client's name]"
    )
    for parser in (authorize, connect):
        parser.add_argument(
            "--url", metavar="URL",
            help="the daemon's base URL, to ask it for its relays [default: from --health, "
            "KEYCAST_HEALTH or PORT, as `keycast status`]",
        )

    add_command(
        commands, "authorizations", common, list_authorizations, json_output=True,
        help="list authorizations and their status",
    )

    revoke = add_command(
        commands, "revoke", common, revoke_authorization,
        help="stop serving an authorization",
        description="Revoke authorization ID. A running daemon stops answering its clients "
        "within one reload interval. Revoking twice is harmless.",
    )
    revoke.add_argument("id", metavar="ID", type=int, help="the authorization's id")


def _max_uses(text: str) -> int | None:
    if text.lower() in ("unlimited", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number or 'unlimited'")
    return value


def _expires_at(ctx: Context, args: argparse.Namespace) -> int | None:
    if args.expires is None:
        return None
    try:
        return parse_when(args.expires, ctx.clock())
    except ValueError as error:
        raise CliError(f"--expires: {error}", EXIT_USAGE) from None


@dataclass(frozen=True)
class DaemonRelays:
    """The relays the daemon uses as far as this command knows, and where that came from."""

    urls: tuple[str, ...] | None  # None: unknown (no KEYCAST_RELAYS, daemon not reachable)
    source: str  # for messages: "KEYCAST_RELAYS", "its /status at ...", "the defaults"


def daemon_relays(
    ctx: Context,
    url: str | None,
    *,
    explicit: bool,
    choose: str,
    fetcher: daemon.Fetch = daemon.fetch,
) -> DaemonRelays:
    """KEYCAST_RELAYS/BUNKER_RELAYS if set here, else what the running daemon reports.

    When the daemon cannot be asked: with ``explicit`` relays (``authorize --relay``) they are
    simply not checked (a note says so); otherwise the built-in defaults, with one warning
    line naming them and ``choose``, how to pick the right ones instead.
    """
    for name in option_spec("relay").env:
        if name in ctx.environ:
            return DaemonRelays(ctx.config.relays, name)
    try:
        target = daemon.daemon_target(ctx, url)
    except CliError as error:  # an endpoint this host cannot dial (ssl, systemd)
        problem = f"cannot ask the daemon for its relays: {error}"
    else:
        timeout = min(ctx.config.check_timeout, daemon.RELAY_LOOKUP_TIMEOUT)
        try:
            relays = daemon.ask_relays(target, timeout, fetcher)
        except daemon.Unreachable as error:
            problem = f"cannot ask the daemon at {target.description} for its relays ({error})"
        else:
            return DaemonRelays(relays, f"its /status at {target.description}")
    if explicit:
        ctx.warn(f"note: {problem}; the --relay URLs are not checked against them")
        return DaemonRelays(None, "unknown")
    ctx.warn(
        f"warning: {problem}; using the default relays {', '.join(DEFAULT_RELAYS)}; {choose}"
    )
    return DaemonRelays(DEFAULT_RELAYS, "the defaults")


def _policy(info: admin.AuthorizationInfo) -> str:
    """The policy's name, or what no policy means: the client may do everything."""
    return info.policy or "none (full access)"


def _describe(ctx: Context, info: admin.AuthorizationInfo) -> None:
    ctx.out(f"  relays: {', '.join(info.relays)}")
    uses = "unlimited" if info.max_uses is None else str(info.max_uses)
    ctx.out(
        f"  policy: {_policy(info)}; max uses: {uses}; "
        f"expires: {timestamp(info.expires_at, empty='never')}"
    )


def authorize_key(ctx: Context, args: argparse.Namespace) -> int:
    expires_at = _expires_at(ctx, args)
    known = daemon_relays(
        ctx,
        args.url,
        explicit=bool(args.uri_relays),
        choose="name the daemon's relays with --relay URL (repeatable) or KEYCAST_RELAYS",
    )
    relays = args.uri_relays or list(known.urls or DEFAULT_RELAYS)
    for url in relays:
        if known.urls is not None and url not in known.urls:
            ctx.warn(
                f"warning: {url} is not one of the daemon's relays ({', '.join(known.urls)}, "
                f"from {known.source}): the daemon will not hear requests sent there"
            )
    conn = ctx.database()
    info, uri = admin.authorize(
        conn,
        ctx.cipher(),
        args.key,
        relays,
        policy=args.policy,
        max_uses=args.max_uses,
        expires_at=expires_at,
        label=args.label,
        same_key=args.same_key,
        clock=ctx.clock,
    )
    ctx.out(f"Authorization #{info.id} for key {info.key_name!r} ({encode_npub(info.user_pubkey)})")
    ctx.out(f"  bunker pubkey: {info.bunker_pubkey}{' (the user key)' if info.same_key else ''}")
    _describe(ctx, info)
    ctx.out("Give this URI to the client. It holds the connect secret and is shown only now:")
    uri_text = uri.to_string()
    ctx.out(uri_text)
    if args.qr:
        segno.make(uri_text, error="m").terminal(out=ctx.stdout, compact=True)
    return EXIT_OK


def connect_client(ctx: Context, args: argparse.Namespace) -> int:
    expires_at = _expires_at(ctx, args)
    uri_text = args.uri
    if uri_text == "-":
        uri_text = ctx.stdin.readline().strip()
        if not uri_text:
            raise CliError("URI -: nothing on stdin", EXIT_USAGE)
    known = daemon_relays(
        ctx,
        args.url,
        explicit=False,
        choose="name the daemon's relays with KEYCAST_RELAYS, or reach it with --url",
    )
    result = admin.connect(
        ctx.database(),
        ctx.cipher(),
        args.key,
        uri_text,
        known.urls or DEFAULT_RELAYS,
        policy=args.policy,
        expires_at=expires_at,
        label=args.label,
        clock=ctx.clock,
    )
    info = result.authorization
    for url in result.ignored_relays:
        ctx.warn(
            f"warning: {url[:100]} is not one of the daemon's relays (from {known.source}): "
            "left out of this authorization"
        )
    ctx.out(f"Authorization #{info.id} for key {info.key_name!r} ({encode_npub(info.user_pubkey)})")
    ctx.out(f"  bunker pubkey: {info.bunker_pubkey}")
    ctx.out(f"  client pubkey: {result.client_pubkey} (the only client it accepts)")
    _describe(ctx, info)
    if info.label:
        ctx.out(f"  label: {info.label}")
    if result.requested_perms:
        ctx.out(
            f"  the client asked for: {', '.join(result.requested_perms)[:300]} "
            f"(not granted from the URI; the policy decides: {_policy(info)})"
        )
    ctx.out(
        "A running daemon sends the client its connect response within one reload interval; "
        "the client then shows it is connected."
    )
    return EXIT_OK


def list_authorizations(ctx: Context, args: argparse.Namespace) -> int:
    infos = admin.list_authorizations(ctx.database(), clock=ctx.clock)
    rows = [
        (
            info.id,
            info.status,
            info.key_name,
            "(user key)" if info.same_key else short(info.bunker_pubkey),
            f"{info.uses}/{'∞' if info.max_uses is None else info.max_uses}",
            timestamp(info.expires_at, empty="never"),
            info.policy or "-",
            info.label or "",
        )
        for info in infos
    ]
    return ctx.listing(
        as_json=args.json,
        records=[asdict(info) for info in infos],
        headers=("ID", "STATUS", "KEY", "BUNKER", "USES", "EXPIRES", "POLICY", "LABEL"),
        rows=rows,
        empty="No authorizations yet; create one with `keycast authorize KEY`.",
    )


def revoke_authorization(ctx: Context, args: argparse.Namespace) -> int:
    conn = ctx.database()
    before = admin.get_authorization(conn, args.id, clock=ctx.clock)
    if before.revoked_at is not None:
        ctx.out(
            f"Authorization #{before.id} was already revoked at {timestamp(before.revoked_at)}; "
            "nothing changed."
        )
        return EXIT_OK
    info = admin.revoke(conn, args.id, clock=ctx.clock)
    ctx.out(
        f"Revoked authorization #{info.id} (key {info.key_name!r}) at "
        f"{timestamp(info.revoked_at)}. A running daemon stops serving it within one reload "
        "interval."
    )
    return EXIT_OK
