"""Run nostr-sdk's LocalRelay on 127.0.0.1 for the interop tests.

LocalRelay is an in-memory relay from PyPI (nostr-sdk) that validates ids and
signatures properly and never stores ephemeral kinds such as 24133, so it is
the default relay the daemon's interop tests talk to.  Its default limit of 60
notes a minute per connection would throttle a signer under test, so this
script raises it.

Usage: python local_relay.py PORT [--nip42 both|read|write]

Prints one ready line, ``LOCAL_RELAY_READY ws://127.0.0.1:PORT``, once the
socket listens, then runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from nostr_sdk import (
    LocalRelayBuilder,
    LocalRelayBuilderNip42,
    LocalRelayBuilderNip42Mode,
    RateLimit,
)

READY_PREFIX = "LOCAL_RELAY_READY"

_NIP42_MODES = {
    "both": LocalRelayBuilderNip42Mode.BOTH,
    "read": LocalRelayBuilderNip42Mode.READ,
    "write": LocalRelayBuilderNip42Mode.WRITE,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the port and the optional NIP-42 mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument(
        "--nip42",
        choices=sorted(_NIP42_MODES),
        help="require NIP-42 AUTH for reads, writes or both",
    )
    return parser.parse_args(argv)


async def serve(port: int, nip42: str | None) -> None:
    """Listen on 127.0.0.1:port until a termination signal arrives."""
    builder = (
        LocalRelayBuilder()
        .addr("127.0.0.1")
        .port(port)
        .rate_limit(RateLimit(max_reqs=1_000, notes_per_minute=1_000_000))
    )
    if nip42 is not None:
        builder = builder.nip42(LocalRelayBuilderNip42(mode=_NIP42_MODES[nip42]))
    relay = builder.build()
    await relay.run()
    print(f"{READY_PREFIX} {await relay.url()}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    relay.shutdown()


def main() -> None:
    """Entry point."""
    args = parse_args()
    asyncio.run(serve(args.port, args.nip42))


if __name__ == "__main__":
    main()
