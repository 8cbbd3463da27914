"""``keycast policy add|list``: named permission sets that authorizations may reference."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from keycast_tw.cli.context import EXIT_OK, Context
from keycast_tw.cli.parsing import Commands, add_command
from keycast_tw.signer import policy as policies
from keycast_tw.signer.model import Permission
from keycast_tw.store import admin


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    policy = add_command(
        commands, "policy", common, help="add or list policies",
        description="A policy restricts what clients of an authorization may do. Its "
        "permissions are combined with AND.",
    )
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    add = add_command(
        actions, "add", common, add_policy, help="create a policy",
        description="Create a policy from one or more permissions.",
        epilog="example: keycast policy add social --allow-kinds 0,1,3,7 --block-words casino",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--allow-kinds", metavar="K,K...", action="append", type=_kinds, default=[],
        help="sign only these event kinds (comma list; repeatable)",
    )
    add.add_argument(
        "--block-words", metavar="W,W...", action="append", type=_words, default=[],
        help="refuse to sign or encrypt text containing these words (case-insensitive)",
    )
    add.add_argument(
        "--encrypt-to-self", action="store_true",
        help="encrypt/decrypt only with the user's own pubkey as the other party",
    )
    add.add_argument(
        "--decrypt-only", action="store_true",
        help="decrypt, and sign only relay AUTH (kind 22242); never encrypt",
    )
    add.add_argument("--full-access", action="store_true", help="allow everything")
    add_command(actions, "list", common, list_policies, json_output=True, help="list the policies")


def _kinds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of kinds") from None


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def permissions_from(args: argparse.Namespace) -> list[Permission]:
    """The permissions the flags describe, in a fixed order."""
    permissions = []
    kinds = [kind for group in args.allow_kinds for kind in group]
    if args.allow_kinds:
        permissions.append(Permission(policies.ALLOWED_KINDS, {"allowed_kinds": kinds}))
    words = [word for group in args.block_words for word in group]
    if args.block_words:
        permissions.append(Permission(policies.CONTENT_FILTER, {"blocked_words": words}))
    for flag, identifier in (
        ("encrypt_to_self", policies.ENCRYPT_TO_SELF),
        ("decrypt_only", policies.DECRYPT_ONLY),
        ("full_access", policies.FULL_ACCESS),
    ):
        if getattr(args, flag):
            permissions.append(Permission(identifier))
    return permissions


def add_policy(ctx: Context, args: argparse.Namespace) -> int:
    info = admin.add_policy(ctx.database(), args.name, permissions_from(args), clock=ctx.clock)
    ctx.out(f"Created policy {info.name!r} (#{info.id}): {describe(info.permissions)}")
    return EXIT_OK


def describe(permissions: tuple[Permission, ...]) -> str:
    """``allowed_kinds 1,7; content_filter spam,scam`` for tables."""
    parts = []
    for permission in permissions:
        values = [
            value
            for setting in permission.config.values()
            for value in (setting if isinstance(setting, list) else [setting])
        ]
        suffix = " " + ",".join(str(v) for v in values) if values else ""
        parts.append(permission.identifier + suffix)
    return "; ".join(parts) or "(allows everything)"


def list_policies(ctx: Context, args: argparse.Namespace) -> int:
    infos = admin.list_policies(ctx.database())
    return ctx.listing(
        as_json=args.json,
        records=[asdict(info) for info in infos],
        headers=("ID", "NAME", "PERMISSIONS"),
        rows=[(info.id, info.name, describe(info.permissions)) for info in infos],
        empty="No policies yet; add one with `keycast policy add NAME ...`.",
    )
