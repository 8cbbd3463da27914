"""Load against the real daemon: the sign_event driver and a /health prober running beside it.

Shared by tests/test_daemon_load.py (which asserts outcomes: every request answered, /health
always 200) and bench/daemon_load.py (which prints the figures). The prober asks one request at a
time, so its latency is what a supervisor's health check would see while the daemon is busy: a
reactor blocked by crypto or database work would show here first.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.interop_harness import REPO, HarnessError, InteropFixture, require_tool

ROUNDTRIP = REPO / "bench" / "roundtrip.mjs"


@dataclass
class HealthProbe:
    """Polls GET ``url`` one request at a time until stopped; keeps codes and latencies."""

    url: str
    reactor: Any
    pool: HTTPConnectionPool
    interval: float = 0.02
    timeout: float = 5.0
    codes: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stopping: bool = False
    _done: Deferred[None] | None = None

    def start(self) -> HealthProbe:
        self._done = Deferred.fromCoroutine(self._run())
        return self

    async def stop(self) -> None:
        self._stopping = True
        if self._done is not None:
            await self._done

    async def _run(self) -> None:
        while not self._stopping:
            started = time.perf_counter()
            try:
                response = await treq.get(
                    self.url, timeout=self.timeout, reactor=self.reactor, pool=self.pool
                )
                await response.content()
            except Exception as error:  # a refused or timed-out probe is a result, not a crash
                self.failures.append(f"{type(error).__name__}: {error}")
            else:
                self.codes.append(response.code)
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            await deferLater(self.reactor, self.interval, lambda: None)


async def run_roundtrip(
    fx: InteropFixture,
    uris: Sequence[str],
    *,
    clients: int,
    inflight: int,
    requests: int,
    max_seconds: int = 60,
    timeout_ms: int = 10_000,
) -> dict[str, Any]:
    """Run bench/roundtrip.mjs to its end and return the JSON line it printed."""
    require_tool("node-clients")
    node = shutil.which("node")
    if node is None:
        raise HarnessError("node is not on PATH")
    argv = [node, str(ROUNDTRIP)]
    for uri in uris:
        argv += ["--uri", uri]
    argv += ["--clients", str(clients), "--inflight", str(inflight)]
    argv += ["--requests", str(requests), "--max-seconds", str(max_seconds)]
    argv += ["--timeout-ms", str(timeout_ms)]
    process = fx.spawn("roundtrip", argv)
    await process.wait_exit(timeout=max_seconds + timeout_ms / 1000 + 30)
    for line in reversed(process.stdout_lines):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            result["exit_code"] = process.exit_code
            return result
    raise process.error("printed no result line")
