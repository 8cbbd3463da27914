"""The ``keycast`` admin command: argument parsing, configuration and error reporting.

Global options (--database, --master-key, --kms ...) come from the same table as the daemon's
(keycast_tw.config.OPTIONS), with the same environment fallbacks, so ``keycast`` and ``twistd
keycast`` run with one environment file always agree on the database and the key. They may be
given before or after the command name.

Exit status: 0 success, 1 operational failure (missing master key, locked database, daemon not
ready), 2 usage error (bad option, unknown key, invalid input; and for ``check``: daemon
unreachable). Errors are one line on stderr, never a traceback, never a secret.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from keycast_tw.cli import authorizations, daemon, identity, keys, maintenance, policies
from keycast_tw.cli.context import EXIT_FAILURE, EXIT_USAGE, CliError, Context
from keycast_tw.config import OPTIONS, ConfigError, config_from
from keycast_tw.store.admin import AdminError
from keycast_tw.store.errors import MasterKeyError, StoreError

_COMMANDS = (maintenance, keys, authorizations, policies, identity, daemon)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings shared with the daemon (option or environment)")
    for spec in OPTIONS:
        if not spec.cli:
            continue
        extra: dict[str, object] = {}
        if spec.name == "kms":
            extra["choices"] = ("file", "gcp")
        group.add_argument(
            spec.flag,
            dest=spec.dest,
            metavar=spec.metavar,
            help=spec.help_text(),
            # SUPPRESS: an option not given stays absent, so the environment applies and an
            # option given before the command is not reset by the command's own parser.
            default=argparse.SUPPRESS,
            **extra,  # type: ignore[arg-type]
        )
    parser = argparse.ArgumentParser(
        prog="keycast",
        parents=[common],
        description="Administer a keycast-tw NIP-46 signer: keys, policies, authorizations, "
        "the database and its master key. A running daemon picks changes up by itself.",
        epilog="Run `keycast COMMAND --help` for a command's options. Example session: "
        "docs/cli.md.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        module.register(commands, common)
    return parser


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    *,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run one command and return its exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(argv))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        config = config_from(vars(args), environ)
    except ConfigError as error:
        return _fail(stderr, str(error), EXIT_USAGE)
    ctx = Context(config, environ, stdin, stdout, stderr, clock=clock)
    try:
        status: int = args.handler(ctx, args)
        return status
    except CliError as error:
        return _fail(stderr, str(error), error.status)
    except AdminError as error:
        return _fail(stderr, str(error), EXIT_USAGE)
    except MasterKeyError as error:
        return _fail(stderr, str(error), EXIT_FAILURE)
    except StoreError as error:
        return _fail(stderr, str(error), EXIT_FAILURE)
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as error:
        return _fail(stderr, f"{error.strerror or error}: {error.filename or ''}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail(stderr, "interrupted", 130)
    finally:
        ctx.close()


def _fail(stderr: TextIO, message: str, status: int) -> int:
    stderr.write(f"keycast: error: {message}\n")
    return status


def main() -> None:
    """Console script entry point ``keycast``."""
    sys.exit(run(sys.argv[1:], os.environ, sys.stdin, sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
