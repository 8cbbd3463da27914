"""CPU cost per NIP-46 request through the whole engine, against the bare crypto floor.

Run: ``.venv/bin/python bench/engine.py [--requests N] [--clients N] [--passes N]``

For sign_event and nip44_encrypt it times, in one process and one thread, with the inline crypto
runner and the in-memory store:

- the engine with a warm key cache (requests from clients it has seen before),
- the engine with a cold key cache (every request from a new client, to a new third party),
- the floor: the same primitives with no engine around them (verify the request, NIP-44 decrypt
  with a known conversation key, parse, execute, NIP-44 encrypt, sign the response; the two
  signatures skip the shape check, as the engine's do), and the same floor plus one
  conversation-key derivation per key the cold engine has to derive.

Figures are thread CPU time (``time.thread_time``), the median of several passes, so other load
on the machine barely moves them. The engine logs through a Logger whose observer drops events,
to time the pipeline and not a log sink. This is a benchmark, not a test: it asserts nothing
about speed, but it does check every response as a client would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
from twisted.logger import ILogObserver, Logger

from keycast_tw.nostr import nip44, nip46
from keycast_tw.nostr.event import event_id, sign_event, sign_validated
from keycast_tw.nostr.keys import SecretKey, schnorr_verify
from keycast_tw.signer.engine import Engine, EngineConfig, Outcome
from keycast_tw.signer.memory import MemoryStore
from keycast_tw.signer.model import Authorization, PlainKey
from keycast_tw.signer.registry import Registry

NOW = 1_800_000_000
NOTE_CONTENT = (
    "Just shipped a new release of the bunker. Remote signing over NIP-46 with NIP-44 v2 "
    "transport, per-client sessions and policies. Feedback welcome! #nostr #dev"
)
NOTE_TAGS = [
    ["t", "nostr"],
    ["t", "dev"],
    ["p", "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"],
]
DM_TEXT = "See you at the meetup tomorrow at 7pm? I'll bring the hardware wallet. " * 3


class Client:
    """A request builder with its conversation key already derived (client cost is not timed)."""

    def __init__(self, bunker: bytes) -> None:
        self.key = SecretKey.generate()
        self.conversation_key = nip44.conversation_key(self.key, bunker)
        self.serial = 0

    def request(self, method: str, params: list[str]) -> dict[str, Any]:
        self.serial += 1
        body = nip46.build_request(f"{self.key.pubkey_hex[:6]}-{self.serial}", method, params)
        template = {
            "kind": nip46.KIND,
            "content": nip44.encrypt(body, self.conversation_key),
            "tags": [["p", BUNKER.pubkey_hex]],
            "created_at": NOW,
        }
        return sign_event(template, self.key)


BUNKER = SecretKey.generate()
USER = SecretKey.generate()


def note_params() -> list[str]:
    template = {"kind": 1, "content": NOTE_CONTENT, "tags": NOTE_TAGS, "created_at": NOW - 5}
    return [orjson.dumps(template).decode()]


def encrypt_params(third_party: str) -> list[str]:
    return [third_party, DM_TEXT]


def make_engine(clients: list[Client]) -> tuple[Engine, Authorization]:
    registry = Registry()
    auth = Authorization(
        id=1,
        bunker_key=PlainKey(BUNKER),
        user_key=PlainKey(USER),
        secret_hash=None,
        relays=("wss://relay.example.com",),
        max_uses=None,
        sessions={client.key.pubkey_hex: True for client in clients},
    )
    registry.put(auth)
    engine = Engine(
        registry,
        MemoryStore(now=lambda: NOW),
        clock=lambda: NOW,
        config=EngineConfig(rate_per_second=0, key_cache_size=100_000),
        log=Logger(observer=cast(ILogObserver, lambda event: None)),
    )
    return engine, auth


def cpu_seconds(run: Callable[[], None]) -> float:
    started = time.thread_time()
    run()
    return time.thread_time() - started


def run_engine(engine: Engine, requests: list[dict[str, Any]]) -> Callable[[], None]:
    def run() -> None:
        handle = engine.handle_event
        for request in requests:
            outcome = cast(Outcome, handle(request).result)  # the inline runner has fired it
            if outcome.outcome != "ok":
                raise SystemExit(f"engine failed a benchmark request: {outcome!r}")

    return run


def run_floor(
    requests: list[dict[str, Any]],
    method: str,
    keys: dict[str, bytes],
    third_keys: dict[str, bytes],
    derive: bool,
) -> Callable[[], None]:
    """The bare pipeline with the same primitives; ``derive`` adds the cold-cache ECDHs."""

    def run() -> None:
        for request in requests:
            digest = bytes.fromhex(event_id(request))
            if digest.hex() != request["id"] or not schnorr_verify(
                digest, bytes.fromhex(request["pubkey"]), bytes.fromhex(request["sig"])
            ):
                raise SystemExit("floor: bad request")
            client = request["pubkey"]
            key = nip44.conversation_key(BUNKER, bytes.fromhex(client)) if derive else keys[client]
            body = orjson.loads(nip44.decrypt(request["content"], key))
            params = body["params"]
            if method == "sign_event":
                template = orjson.loads(params[0])
                result = orjson.dumps(sign_validated(USER, **template)).decode()
            else:
                third = params[0]
                third_key = (
                    nip44.conversation_key(USER, bytes.fromhex(third))
                    if derive
                    else third_keys[third]
                )
                result = nip44.encrypt(params[1], third_key)
            reply = nip46.response_json(body["id"], result)
            sign_validated(
                BUNKER,
                kind=nip46.KIND,
                content=nip44.encrypt(reply, key),
                tags=[["p", client], ["e", request["id"]]],
                created_at=NOW,
            )

    return run


def build(
    method: str, clients: list[Client], count: int, third_parties: list[str]
) -> list[dict[str, Any]]:
    """``count`` requests cycling through ``clients`` (and third parties for nip44_encrypt)."""
    requests = []
    for n in range(count):
        client = clients[n % len(clients)]
        if method == "sign_event":
            params = note_params()
        else:
            params = encrypt_params(third_parties[n % len(third_parties)])
        requests.append(client.request(method, params))
    return requests


def median_rate(samples: list[float], count: int) -> tuple[float, float]:
    seconds = statistics.median(samples)
    return seconds / count * 1e6, count / seconds


def check_response(engine: Engine, client: Client, method: str, params: list[str]) -> None:
    """Decrypt and verify one response like a client, so the benchmark times correct work."""
    outcome = cast(Outcome, engine.handle_event(client.request(method, params)).result)
    response = outcome.response
    if response is None:
        raise SystemExit(f"no response: {outcome!r}")
    digest = bytes.fromhex(event_id(response))
    if not schnorr_verify(digest, BUNKER.pubkey, bytes.fromhex(response["sig"])):
        raise SystemExit("bad response signature")
    reply = nip46.parse_response(nip44.decrypt(response["content"], client.conversation_key))
    if reply.error is not None or not reply.result:
        raise SystemExit(f"error response: {reply.error}")
    if method == "sign_event":
        signed = orjson.loads(reply.result)
        digest = bytes.fromhex(signed["id"])
        if not schnorr_verify(digest, USER.pubkey, bytes.fromhex(signed["sig"])):
            raise SystemExit("bad signature on the signed event")


def scenario(method: str, args: argparse.Namespace) -> Iterator[tuple[str, float, float]]:
    bunker = BUNKER.pubkey
    warm_clients = [Client(bunker) for _ in range(args.clients)]
    third_pool = [SecretKey.generate().pubkey_hex for _ in range(args.clients)]
    cold_clients = [Client(bunker) for _ in range(args.requests * args.passes)]
    engine, _ = make_engine(warm_clients + cold_clients)

    # Warm the caches (and check the output once) with requests not used for timing.
    for request in build(method, warm_clients, len(warm_clients), third_pool):
        engine.handle_event(request)
    params = note_params() if method == "sign_event" else encrypt_params(third_pool[0])
    check_response(engine, warm_clients[0], method, params)

    warm_passes = [
        build(method, warm_clients, args.requests, third_pool) for _ in range(args.passes)
    ]
    cold_passes = []
    for p in range(args.passes):
        chunk = cold_clients[p * args.requests : (p + 1) * args.requests]
        thirds = [SecretKey.generate().pubkey_hex for _ in range(args.requests)]
        cold_passes.append(build(method, chunk, args.requests, thirds))

    warm = [cpu_seconds(run_engine(engine, requests)) for requests in warm_passes]
    cold = [cpu_seconds(run_engine(engine, requests)) for requests in cold_passes]

    keys = {c.key.pubkey_hex: c.conversation_key for c in warm_clients}
    third_keys = {t: nip44.conversation_key(USER, bytes.fromhex(t)) for t in third_pool}
    floor = [
        cpu_seconds(run_floor(requests, method, keys, third_keys, derive=False))
        for requests in warm_passes
    ]
    floor_cold = [
        cpu_seconds(run_floor(requests, method, keys, third_keys, derive=True))
        for requests in cold_passes
    ]
    n = args.requests
    yield f"{method} engine, warm cache", *median_rate(warm, n)
    yield f"{method} floor, known keys", *median_rate(floor, n)
    yield f"{method} engine, cold cache", *median_rate(cold, n)
    yield f"{method} floor + key derivation", *median_rate(floor_cold, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per pass")
    parser.add_argument("--clients", type=int, default=100, help="distinct warm clients")
    parser.add_argument("--passes", type=int, default=5, help="passes; the median is reported")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {args.requests} requests x {args.passes} passes, "
        f"{args.clients} warm clients; thread CPU time, median pass"
    )
    print(f"{'scenario':40} {'us/req':>8} {'req/s/core':>11} {'engine/floor':>13}")
    for method in ("sign_event", "nip44_encrypt"):
        rows = list(scenario(method, args))
        for (name, micros, rate), floor_rate in zip(
            rows, (rows[1][2], None, rows[3][2], None), strict=True
        ):
            ratio = f"{rate / floor_rate:12.0%}" if floor_rate else ""
            print(f"{name:40} {micros:8.1f} {rate:11,.0f} {ratio:>13}")


if __name__ == "__main__":
    main()
