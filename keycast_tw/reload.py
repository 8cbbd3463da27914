"""The ``.reload_signal`` file: external tools (the Rust original's API among them) create it to
ask for a reload; we remove it only after the reload succeeded, so a failed one is retried on the
next tick instead of being lost (the Rust original deleted it first, B15)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class ReloadSignalWatcher(Service):
    log = Logger()

    def __init__(
        self,
        path: str,
        *,
        reload: Callable[[], Deferred[Any]],
        clock: IReactorTime,
        interval: float,
        exists: Callable[[str], bool] = os.path.exists,
        remove: Callable[[str], None] = os.remove,
    ) -> None:
        self.setName("reload-signal")  # type: ignore[no-untyped-call]
        self.path = path
        self._reload = reload
        self._clock = clock
        self._interval = interval
        self._exists = exists
        self._remove = remove
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()  # type: ignore[no-untyped-call]

    def check(self) -> Deferred[None] | None:
        """One tick; returning the reload's Deferred keeps LoopingCall from overlapping it."""
        try:
            present = self._exists(self.path)
        except OSError:
            present = False
        if not present:
            return None
        self.log.info("Reload signal found at {path}", path=self.path)
        d = maybeDeferred(self._reload)
        d.addCallbacks(self._reloaded, self._failed)
        return d

    def _reloaded(self, info: Any) -> None:
        if getattr(info, "error", None) is not None:
            self.log.error("Reload from signal failed; will retry: {error}", error=info.error)
            return
        try:
            self._remove(self.path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self.log.error(
                "Cannot remove reload signal {path}: {error}", path=self.path, error=str(error)
            )

    def _failed(self, failure: Any) -> None:
        # Never let the LoopingCall die: log and keep the signal so the next tick retries.
        self.log.error(
            "Reload from signal failed; will retry: {error}", error=failure.getErrorMessage()
        )
