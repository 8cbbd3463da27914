"""The ``.reload_signal`` file: external tools (the Rust original's API among them) create it to
ask for a reload; we remove it only after the reload succeeded, so a failed one is retried on the
next tick instead of being lost (the Rust original deleted it first, B15).

Only a regular file is a signal, and one we reloaded for but could not remove (a directory we
cannot write, another user's sticky /tmp-like directory) is remembered by inode and mtime and
not acted on again until it changes: otherwise every tick would run a full reload, forever.
"""

from __future__ import annotations

import os
import stat
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
        lstat: Callable[[str], os.stat_result] = os.lstat,
        remove: Callable[[str], None] = os.remove,
    ) -> None:
        self.setName("reload-signal")  # type: ignore[no-untyped-call]
        self.path = path
        self._reload = reload
        self._clock = clock
        self._interval = interval
        self._lstat = lstat
        self._remove = remove
        self._loop: LoopingCall | None = None
        # (inode, mtime) of a path already reported as unusable or as not removable.
        self._ignored: tuple[int, int] | None = None

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
            found = self._lstat(self.path)
        except OSError:  # absent, or a directory on the way we may not search: no signal
            self._ignored = None
            return None
        identity = (found.st_ino, found.st_mtime_ns)
        if identity == self._ignored:
            return None
        if not stat.S_ISREG(found.st_mode):
            self._ignored = identity
            self.log.error(
                "Reload signal {path} is not a regular file; ignoring it", path=self.path
            )
            return None
        self.log.info("Reload signal found at {path}", path=self.path)
        d = maybeDeferred(self._reload)
        d.addCallbacks(self._reloaded, self._failed, callbackArgs=(identity,))
        return d

    def _reloaded(self, info: Any, identity: tuple[int, int]) -> None:
        if getattr(info, "error", None) is not None:
            self.log.error("Reload from signal failed; will retry: {error}", error=info.error)
            return
        try:
            self._remove(self.path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self._ignored = identity
            self.log.error(
                "Cannot remove reload signal {path}: {error}; it is ignored until it changes",
                path=self.path,
                error=error.strerror or str(error),
            )

    def _failed(self, failure: Any) -> None:
        # Never let the LoopingCall die: log and keep the signal so the next tick retries.
        self.log.error(
            "Reload from signal failed; will retry: {error}", error=failure.getErrorMessage()
        )
