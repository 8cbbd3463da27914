"""Declaring a ``keycast`` command: its parser, the shared options, its handler, ``--json``.

Every command and action repeats the same three steps; one function keeps them identical, so
no command can forget the shared options (``--database`` after the command name) or spell
``--json`` differently.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

from keycast_tw.cli.context import Context

Handler = Callable[[Context, argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_command(
    commands: Commands,
    name: str,
    common: argparse.ArgumentParser,
    handler: Handler | None = None,
    *,
    json_output: bool = False,
    **details: Any,
) -> argparse.ArgumentParser:
    """Add command ``name`` (help, description... in ``details``); returns its parser.

    ``handler`` is what main.run calls; a group such as ``key`` has none, its actions do.
    ``json_output`` adds the ``--json`` flag that listings share.
    """
    parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], **details)
    if handler is not None:
        parser.set_defaults(handler=handler)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON")
    return parser
