"""``keycast identity``: the pubkey the daemon signs relay AUTH (NIP-42) with, for allow-lists.

Prints the public half only. The key is the one the daemon loads at start; asking for it before
the first start creates it, so an operator can allow-list it on a relay before the daemon runs.
"""

from __future__ import annotations

import argparse

from keycast_tw.cli.context import EXIT_OK, Context
from keycast_tw.cli.output import to_json
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.nostr.nip19 import encode_npub
from keycast_tw.store.identity import load_or_create_relay_identity


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    add_command(
        commands, "identity", common, show_identity, json_output=True,
        help="print the pubkey the daemon signs relay AUTH with",
        description="Print the npub and hex pubkey of the daemon's relay identity, the key it "
        "signs NIP-42 AUTH events with, to add to a relay's allow-list. It stays the same across "
        "restarts and master key rotations. The secret is never printed.",
    )


def show_identity(ctx: Context, args: argparse.Namespace) -> int:
    key = load_or_create_relay_identity(ctx.database(), ctx.cipher(), clock=ctx.clock)
    npub = encode_npub(key.pubkey_hex)
    if args.json:
        ctx.out(to_json({"npub": npub, "pubkey": key.pubkey_hex}))
    else:
        ctx.out(f"npub: {npub}")
        ctx.out(f"hex:  {key.pubkey_hex}")
    return EXIT_OK
