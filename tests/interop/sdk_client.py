"""A second real NIP-46 client: nostr-sdk's NostrConnect, driven by a JSON scenario.

Usage: python sdk_client.py --uri 'bunker://...' --scenario '[{"op": "connect"}]'
       [--scenario-file PATH] [--timeout-ms 10000] [--client-secret HEX] [--keep-going]

The scenario and the output have the same shape as bunker_client.mjs (one JSON
line per step, then ``{"event": "end", "ok": ...}``; exit 0 when every step
succeeded, 1 otherwise, 2 for bad usage), so one daemon test can run both
clients.  nostr-sdk 0.45.1 exposes fewer methods than nostr-tools:

- ``connect`` has no method of its own: the first request sends ``connect``
  with the URI's secret and then ``get_public_key``, so the step calls
  ``get_public_key`` and reports the user pubkey;
- ``ping``, ``switch_relays``, ``logout`` and raw ``request`` steps are
  reported as failed with ``"source": "unsupported"``;
- its sign_event request carries ``pubkey``, unlike nostr-tools.

A bunker error reply and a library failure both arrive as ``NostrSdkError``
(``source: "bunker"``); the library's own timeout and this script's deadline
(slightly longer, it only catches a hang) both give ``source: "timeout"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nostr_sdk import (
    Keys,
    Nip44Version,
    NostrConnect,
    NostrConnectUri,
    NostrSdkError,
    PublicKey,
    UnsignedEvent,
    nip04_decrypt,
    nip04_encrypt,
    nip44_decrypt,
    nip44_encrypt,
)

SUPPORTED = frozenset(
    {"connect", "get_public_key", "sign_event", "nip44_roundtrip", "nip04_roundtrip"}
)
UNSUPPORTED = frozenset({"ping", "switch_relays", "logout", "request"})
# The harness only ever talks to relays on this machine.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class UsageError(Exception):
    """The command line or the scenario is malformed."""


class Unsupported(Exception):
    """nostr-sdk's NostrConnect has no way to send this request."""


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line and flush, so a parent sees progress live."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read and check the options; the scenario is validated here too."""
    parser = argparse.ArgumentParser(description="nostr-sdk NostrConnect scenario client")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--scenario")
    parser.add_argument("--scenario-file")
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    parser.add_argument("--client-secret")
    parser.add_argument("--keep-going", action="store_true")
    args = parser.parse_args(argv)
    if args.scenario is None and args.scenario_file is None:
        raise UsageError("--scenario or --scenario-file is required")
    text = args.scenario
    if text is None:
        with open(args.scenario_file, encoding="utf-8") as f:
            text = f.read()
    try:
        steps = json.loads(text)
    except ValueError as e:
        raise UsageError(f"scenario is not JSON: {e}") from None
    known = SUPPORTED | UNSUPPORTED
    if not isinstance(steps, list) or not all(
        isinstance(s, dict) and s.get("op") in known for s in steps
    ):
        raise UsageError(f"scenario steps need an op among {sorted(known)}")
    if args.timeout_ms <= 0:
        raise UsageError("--timeout-ms must be positive")
    args.steps = steps
    return args


class Session:
    """One NostrConnect client plus what the scenario learnt so far."""

    def __init__(self, client: NostrConnect) -> None:
        self.client = client
        self.user_pubkey: PublicKey | None = None

    async def user(self) -> PublicKey:
        """The user's pubkey, asked once (this also performs ``connect``)."""
        if self.user_pubkey is None:
            self.user_pubkey = await self.client.get_public_key_async()
        return self.user_pubkey

    async def sign_event(self, step: dict[str, Any]) -> Any:
        """Sign a template; the returned event's id and signature are checked."""
        pubkey = await self.user()
        template = {"created_at": int(time.time()), "tags": [], "content": ""}
        template.update(step.get("event", {}))
        template["pubkey"] = pubkey.to_hex()
        signed = await self.client.sign_event_async(UnsignedEvent.from_json(json.dumps(template)))
        if signed is None:
            raise NostrSdkError.Generic("no event returned")
        if not signed.verify():
            raise NostrSdkError.Generic("event returned from bunker is improperly signed")
        return json.loads(signed.as_json())

    async def roundtrip(self, scheme: str, step: dict[str, Any]) -> dict[str, Any]:
        """Encrypt then decrypt through the bunker, optionally cross-checked by the peer."""
        client = self.client
        encrypt, decrypt = (
            (client.nip44_encrypt_async, client.nip44_decrypt_async)
            if scheme == "nip44"
            else (client.nip04_encrypt_async, client.nip04_decrypt_async)
        )
        user = await self.user()
        peer_keys = Keys.parse(step["peer_secret"]) if "peer_secret" in step else None
        peer_field = step.get("peer", "self")
        if peer_keys is not None:
            peer = peer_keys.public_key()
        elif peer_field == "self":
            peer = user
        else:
            peer = PublicKey.parse(peer_field)
        plaintext = step.get("plaintext", "keycast interop")
        ciphertext = await encrypt(peer, plaintext)
        decrypted = await decrypt(peer, ciphertext)
        result: dict[str, Any] = {
            "peer": peer.to_hex(),
            "ciphertext": ciphertext,
            "decrypted": decrypted,
            "match": decrypted == plaintext,
        }
        if peer_keys is not None:
            secret = peer_keys.secret_key()
            if scheme == "nip44":
                readable = nip44_decrypt(secret, user, ciphertext)
                from_peer = nip44_encrypt(secret, user, plaintext, Nip44Version.V2)
            else:
                readable = nip04_decrypt(secret, user, ciphertext)
                from_peer = nip04_encrypt(secret, user, plaintext)
            result["peer_decrypts"] = readable == plaintext
            result["bunker_decrypts"] = (await decrypt(peer, from_peer)) == plaintext
        return result

    async def run(self, step: dict[str, Any]) -> Any:
        """Perform one step and return its JSON-able result."""
        op = step["op"]
        if op in UNSUPPORTED:
            raise Unsupported(f"nostr-sdk NostrConnect cannot send {op}")
        if op in ("connect", "get_public_key"):
            return (await self.user()).to_hex()
        if op == "sign_event":
            return await self.sign_event(step)
        return await self.roundtrip("nip44" if op == "nip44_roundtrip" else "nip04", step)


def describe(error: BaseException) -> dict[str, str]:
    """Map an exception to the error/source pair both clients print."""
    if isinstance(error, TimeoutError):
        return {"error": "timeout", "source": "timeout"}
    if isinstance(error, Unsupported):
        return {"error": str(error), "source": "unsupported"}
    if isinstance(error, NostrSdkError):
        message = str(error).strip("'")
        return {"error": message, "source": "timeout" if message == "timeout" else "bunker"}
    return {"error": f"{type(error).__name__}: {error}", "source": "client"}


async def run_scenario(args: argparse.Namespace) -> bool:
    """Run every step, printing one line each; True when all succeeded."""
    parts = urlsplit(args.uri)
    for relay in parse_qs(parts.query).get("relay", []):
        if urlsplit(relay).hostname not in LOOPBACK:
            raise UsageError(f"relay {relay} is not on loopback")
    try:
        uri = NostrConnectUri.parse(args.uri)
        keys = Keys.parse(args.client_secret) if args.client_secret else Keys.generate()
    except NostrSdkError as e:
        raise UsageError(str(e)) from None
    timeout = timedelta(milliseconds=args.timeout_ms)
    client = NostrConnect(uri, keys, timeout, None)
    emit(
        {
            "event": "start",
            "client_pubkey": keys.public_key().to_hex(),
            "bunker_pubkey": parts.netloc,
            "relays": [str(r) for r in client.relays()],
        }
    )
    session = Session(client)
    all_ok = True
    stalled = False
    for index, step in enumerate(args.steps):
        if stalled:
            emit(
                {
                    "step": index,
                    "op": step["op"],
                    "ok": False,
                    "error": "skipped after a timeout",
                    "source": "skipped",
                    "ms": 0,
                }
            )
            continue
        started = time.perf_counter()
        # Our deadline is a little longer than the library's own, so its
        # 'timeout' error normally wins and ours only catches a hang.
        seconds = step.get("timeout_ms", args.timeout_ms) / 1000 + 1
        try:
            result = await asyncio.wait_for(session.run(step), seconds)
        except Exception as e:  # every failure is data for the test
            all_ok = False
            description = describe(e)
            stalled = description["source"] == "timeout" and not args.keep_going
            emit(
                {
                    "step": index,
                    "op": step["op"],
                    "ok": False,
                    **description,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        else:
            emit(
                {
                    "step": index,
                    "op": step["op"],
                    "ok": True,
                    "result": result,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
    emit({"event": "end", "ok": all_ok})
    return all_ok


def main() -> None:
    """Entry point; exit status as documented above."""
    try:
        args = parse_args()
        ok = asyncio.run(run_scenario(args))
    except UsageError as e:
        sys.stderr.write(f"sdk_client.py: {e}\n")
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
