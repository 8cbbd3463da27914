"""``keycast key add|list``: the user keys whose signatures the daemon serves."""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict

from keycast_tw.cli.context import EXIT_OK, EXIT_USAGE, CliError, Context
from keycast_tw.cli.output import timestamp
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.nostr.errors import NostrError
from keycast_tw.nostr.nip19 import decode_nsec
from keycast_tw.store import admin

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    key = add_command(
        commands, "key", common, help="add or list user keys",
        description="User keys are the identities clients sign with; they are stored encrypted "
        "under the master key.",
    )
    actions = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    add = add_command(
        actions, "add", common, add_key, help="generate or import a key; prints its npub",
        description="Store a user key under NAME: a fresh random key, or an existing one with "
        "--nsec. Prints the npub. Use `--nsec -` to read the key from stdin so that it does not "
        "land in your shell history or the process list.",
    )
    add.add_argument("name", metavar="NAME", help="a short name to refer to the key")
    add.add_argument(
        "--nsec", metavar="NSEC",
        help="import this key (nsec1... or 64 hex digits); '-' reads it from stdin",
    )
    add_command(actions, "list", common, list_keys, json_output=True, help="list the stored keys")


def parse_secret_key(text: str) -> bytes:
    """32 raw bytes from an nsec or 64 hex digits; the error never repeats the input."""
    text = text.strip()
    if text.startswith("nsec1"):
        try:
            return decode_nsec(text)
        except NostrError:
            raise CliError("that nsec is not valid (bad checksum or length)", EXIT_USAGE) from None
    if _HEX64.fullmatch(text):
        return bytes.fromhex(text)
    raise CliError("a key to import is an nsec1... string or 64 hex digits", EXIT_USAGE)


def add_key(ctx: Context, args: argparse.Namespace) -> int:
    secret = None
    if args.nsec is not None:
        if args.nsec == "-":
            text = ctx.stdin.readline()
            if not text.strip():
                raise CliError("--nsec -: nothing on stdin", EXIT_USAGE)
        else:
            text = args.nsec
            ctx.warn(
                "warning: a key on the command line can end up in shell history and the process "
                "list; prefer --nsec - and stdin"
            )
        secret = parse_secret_key(text)
    conn = ctx.database()
    info = admin.add_key(conn, ctx.cipher(), args.name, secret, clock=ctx.clock)
    ctx.out(f"{'Imported' if secret else 'Generated'} key {info.name!r} (#{info.id})")
    ctx.out(info.npub)
    return EXIT_OK


def list_keys(ctx: Context, args: argparse.Namespace) -> int:
    keys = admin.list_keys(ctx.database())
    return ctx.listing(
        as_json=args.json,
        records=[{**asdict(key), "npub": key.npub} for key in keys],
        headers=("ID", "NAME", "NPUB", "CREATED"),
        rows=[(key.id, key.name, key.npub, timestamp(key.created_at)) for key in keys],
        empty="No keys yet; add one with `keycast key add NAME`.",
    )
