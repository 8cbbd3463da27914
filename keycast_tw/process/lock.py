"""Single-instance guarantee: an exclusive ``flock`` on ``<database>.lock``.

Two daemons on one database would both answer every request (and race on reloads), and the
pidfile cannot prevent it: it is checked and written non-atomically and lives wherever twistd
was told. ``flock`` is atomic, is released by the kernel when the process dies however it dies
(so it can never go stale), and belongs to the open file description, so it survives twistd's
daemonising fork. The lock file is never deleted: unlinking it would let a second process lock
a fresh inode while the first still holds the old one.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType


class InstanceLockError(Exception):
    """The database is locked by another daemon, or the lock file cannot be opened."""


def lock_path_for(database_path: str) -> str:
    """The lock file that guards ``database_path``."""
    return database_path + ".lock"


class InstanceLock:
    """A held lock; keep the object for the process lifetime and :meth:`release` on stop."""

    def __init__(self, database_path: str, fd: int) -> None:
        self.database_path = database_path
        self.path = lock_path_for(database_path)
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close; idempotent, so a stop after a failed start is harmless."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The PID recorded in the lock file by its holder, or "unknown"."""
    try:
        content = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return content if content.isdigit() else "unknown"


def acquire_instance_lock(database_path: str) -> InstanceLock:
    """Lock ``<database_path>.lock`` or raise :class:`InstanceLockError` with a clear message.

    The holder writes its PID into the lock file so the refusal can name it.
    """
    path = lock_path_for(database_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise InstanceLockError(f"cannot open lock file {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise InstanceLockError(
            f"another keycast daemon is already running on {database_path} (pid {holder})"
        ) from None
    except OSError as error:
        os.close(fd)
        raise InstanceLockError(f"cannot lock {path}: {error.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the PID is only for the refusal message; the lock itself is held
    return InstanceLock(database_path, fd)
