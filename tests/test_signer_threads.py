"""The crypto-runner seam with a real thread pool: the engine's blocking work leaves the reactor."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from keycast_tw.signer.crypto import ThreadPoolRunner

from .signer_helpers import SECRET, World


class ThreadPoolSeamTests(TestCase):
    def test_pipeline_in_thread_pool(self) -> Deferred[None]:
        """connect and sign_event work with crypto on pool threads and state on the reactor."""
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-signer-crypto")
        pool.start()
        self.addCleanup(pool.stop)
        runner = ThreadPoolRunner(reactor, pool)  # type: ignore[arg-type]
        crypto_threads: set[int] = set()
        callback_threads: set[int] = set()

        def recording(f: Callable[..., Any], /, *args: object) -> Deferred[Any]:
            def on_pool(*inner: object) -> Any:
                crypto_threads.add(threading.get_ident())
                return f(*inner)

            def on_reactor(result: Any) -> Any:
                callback_threads.add(threading.get_ident())
                return result

            return runner(on_pool, *args).addCallback(on_reactor)

        world = World(self, run_crypto=recording)
        client = world.client()
        now = world.clock.seconds()

        async def session() -> None:
            connect = client.request("connect", ["", SECRET], created_at=now)
            outcome = await world.engine.handle_event(connect)
            self.assertEqual(client.read(outcome.response, connect).result, "ack")
            self.assertEqual(world.auth.sessions, {client.pubkey: True})
            note = '{"kind":1,"content":"threads","tags":[],"created_at":1799999999}'
            request = client.request("sign_event", [note], created_at=now)
            outcome = await world.engine.handle_event(request)
            self.assertEqual(outcome.outcome, "ok")
            self.assertIn(
                '"content":"threads"', client.read(outcome.response, request).result or ""
            )

        def check(_: None) -> None:
            main = threading.get_ident()
            self.assertTrue(crypto_threads)
            self.assertNotIn(main, crypto_threads)
            self.assertEqual(callback_threads, {main})

        return Deferred.fromCoroutine(session()).addCallback(check)
