"""Single-instance guarantee: an exclusive ``flock`` on ``<database>.lock``.

Two daemons on one database would both answer every request (and race on reloads), and the
pidfile cannot prevent it: it is checked and written non-atomically and lives wherever twistd
was told. ``flock`` is atomic, is released by the kernel when the process dies however it dies
(so it can never go stale), and belongs to the open file description, so it survives twistd's
daemonising fork. The lock file is never deleted: unlinking it would let a second process lock
a fresh inode while the first still holds the old one.

With ``--shard K/N`` several daemons share one database, each serving its own bunkers: each
takes a shared lock on ``<database>.lock`` (so no unsharded daemon can run beside them) and an
exclusive one on ``<database>.shard-K-of-N.lock`` (so no two daemons serve the same shard).
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType


class InstanceLockError(Exception):
    """The database is locked by another daemon, or the lock file cannot be opened."""


def lock_path_for(database_path: str, shard: tuple[int, int] | None = None) -> str:
    """The lock file that guards ``database_path`` (or one shard of it: (K, N))."""
    if shard is None:
        return database_path + ".lock"
    index, count = shard
    return f"{database_path}.shard-{index}-of-{count}.lock"


class InstanceLock:
    """Held locks; keep the object for the process lifetime and :meth:`release` on stop."""

    def __init__(self, database_path: str, fds: list[int], path: str) -> None:
        self.database_path = database_path
        self.path = path
        self._fds = fds

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return bool(self._fds)

    def release(self) -> None:
        """Unlock and close; idempotent, so a stop after a failed start is harmless."""
        fds, self._fds = self._fds, []
        for fd in reversed(fds):
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


def acquire_instance_lock(
    database_path: str, shard: tuple[int, int] | None = None
) -> InstanceLock:
    """Lock ``<database_path>.lock`` (shared, plus the shard's lock, with ``shard``) or raise
    :class:`InstanceLockError` with a clear message.

    The holder of an exclusive lock writes its PID into the file so the refusal can name it.
    """
    if shard is None:
        fd = _lock(lock_path_for(database_path), fcntl.LOCK_EX, database_path)
        return InstanceLock(database_path, [fd], lock_path_for(database_path))
    shared = _lock(lock_path_for(database_path), fcntl.LOCK_SH, database_path)
    try:
        own = _lock(lock_path_for(database_path, shard), fcntl.LOCK_EX, database_path, shard)
    except InstanceLockError:
        os.close(shared)
        raise
    return InstanceLock(database_path, [shared, own], lock_path_for(database_path, shard))


def _lock(
    path: str, mode: int, database_path: str, shard: tuple[int, int] | None = None
) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise InstanceLockError(f"cannot open lock file {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        what = f"shard {shard[0]}/{shard[1]} of {database_path}" if shard else database_path
        raise InstanceLockError(
            f"another keycast daemon is already running on {what} (pid {holder})"
        ) from None
    except OSError as error:
        os.close(fd)
        raise InstanceLockError(f"cannot lock {path}: {error.strerror}") from None
    try:
        # A shared holder clears any PID left by an earlier exclusive holder: several
        # sharded daemons hold it, so none of them can be named.
        os.ftruncate(fd, 0)
        if mode == fcntl.LOCK_EX:
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the PID is only for the refusal message; the lock itself is held
    return fd
