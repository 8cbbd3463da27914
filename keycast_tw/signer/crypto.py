"""Where the engine's blocking crypto runs, and the bounded cache of derived keys.

The engine hands each request's crypto to a ``CryptoRunner`` as at most two calls of pure
functions (verify + decrypt; execute + encrypt + sign). ``run_inline`` runs them on the calling
thread, which is what tests and the single-process benchmark use; ``ThreadPoolRunner`` sends them
to a dedicated CPU pool so the reactor keeps serving relays while signatures are computed. The
functions never touch shared state, so the same engine code is correct with either runner.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_R = TypeVar("_R")
_K = TypeVar("_K")
_V = TypeVar("_V")


class CryptoRunner(Protocol):
    """Run ``f(*args)`` somewhere and deliver its result (or exception) as a Deferred.

    The Deferred must fire on the reactor thread: the engine mutates sessions, caches and rate
    limits in its callbacks.
    """

    def __call__(self, f: Callable[..., _R], /, *args: object) -> Deferred[_R]: ...


def run_inline(f: Callable[..., _R], /, *args: object) -> Deferred[_R]:
    """Run ``f`` now, on this thread; the Deferred has already fired when returned."""
    try:
        result = f(*args)
    except BaseException:
        return fail()
    return succeed(result)


class ThreadPoolRunner:
    """Run crypto in ``pool``; results come back to the reactor thread via callFromThread.

    The pool's lifecycle (start, stop at shutdown) belongs to whoever created it.
    """

    __slots__ = ("_pool", "_reactor")

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool

    def __call__(self, f: Callable[..., _R], /, *args: object) -> Deferred[_R]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)


class KeyCache(Generic[_K, _V]):
    """A bounded least-recently-used map, for keys that are costly to derive.

    The engine keeps NIP-44 conversation keys and NIP-04 shared secrets here, keyed by (own pubkey,
    peer pubkey): deriving one is an ECDH (about 50 µs), a third of a whole request. Bounded so a
    stream of new client keys cannot grow memory without limit. Reactor thread only.
    """

    __slots__ = ("_entries", "_max_size", "hits", "misses")

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        self._max_size = max_size
        self._entries: OrderedDict[_K, _V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: _K) -> _V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: _K, value: _V) -> None:
        if self._max_size == 0:
            return
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self._max_size:
            entries.popitem(last=False)
        entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        # Never the entries: they are secret key material.
        return f"KeyCache(size={len(self._entries)}, max_size={self._max_size})"
