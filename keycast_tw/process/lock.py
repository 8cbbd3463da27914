"""Single-instance guarantee: an exclusive ``flock`` on ``<database>.lock`` and on the database.

Two daemons on one database would both answer every request (and race on reloads), and the
pidfile cannot prevent it: it is checked and written non-atomically and lives wherever twistd
was told. ``flock`` is atomic, is released by the kernel when the process dies however it dies
(so it can never go stale), and belongs to the open file description, so it survives twistd's
daemonising fork. The lock file is never deleted: unlinking it would let a second process lock
a fresh inode while the first still holds the old one.

One database can be reached by several paths. The lock file is named after the database's
real path (``os.path.realpath``), so a symlink (to the file or to a directory) leads to the same
lock file. A hard link, or a bind mount of the file itself (``docker -v db:/data/keycast.db``),
is another name for the same inode that no path arithmetic can see, so the database file itself
is flocked too, in the same mode: its lock follows the inode, whatever the path. flock on Linux
does not interact with SQLite's POSIX (fcntl) locks, and the descriptor is opened read-only and
never written. One rule comes with it: closing any descriptor of a file drops the process's
POSIX locks on it, SQLite's included, so :meth:`InstanceLock.release` must run only after this
process has closed the database (the daemon releases last, after the store has stopped).

With ``--shard K/N`` several daemons share one database, each serving its own bunkers: each
takes a shared lock on ``<database>.lock`` and on the database file (so no unsharded daemon can
run beside them, whatever path it uses) and an exclusive one on ``<database>.shard-K-of-N.lock``
(so no two daemons serve the same shard). The shard lock is only path-based: the same shard
started twice through two hard links to the database is not caught. SQLite itself does not
support one database under two names (each name gets its own -wal and -shm); do not do that.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType


class InstanceLockError(Exception):
    """The database is locked by another daemon, or the lock file cannot be opened."""


def lock_path_for(database_path: str, shard: tuple[int, int] | None = None) -> str:
    """The lock file that guards ``database_path`` (or one shard of it: (K, N)), next to the
    database's real path, so that every symlinked path to it names the same lock file."""
    real = os.path.realpath(database_path)
    if shard is None:
        return real + ".lock"
    index, count = shard
    return f"{real}.shard-{index}-of-{count}.lock"


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
    """Lock ``<database_path>.lock`` and the database file (exclusive; shared, plus the shard's
    lock, with ``shard``) or raise :class:`InstanceLockError` with a clear message.

    The holder of an exclusive lock writes its PID into the lock file so the refusal can name it.
    """
    mode = fcntl.LOCK_EX if shard is None else fcntl.LOCK_SH
    fds = [_lock(lock_path_for(database_path), mode, database_path)]
    try:
        database_fd = _lock_database(database_path, mode)
        if database_fd is not None:
            fds.append(database_fd)
        if shard is not None:
            fds.append(
                _lock(lock_path_for(database_path, shard), fcntl.LOCK_EX, database_path, shard)
            )
    except InstanceLockError:
        for fd in fds:
            os.close(fd)
        raise
    return InstanceLock(database_path, fds, lock_path_for(database_path, shard))


def _lock_database(database_path: str, mode: int) -> int | None:
    """flock the database file itself (read-only descriptor, never written), which catches a
    daemon that reached the same inode through another name. None when the file cannot be
    opened: the store then reports the real problem (missing, unreadable) in its own words."""
    try:
        fd = os.open(database_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InstanceLockError(
            f"another keycast daemon is already running on {_named(database_path)}, reached"
            " through another path (a hard link or a bind mount of the file; pid unknown)"
        ) from None
    except OSError as error:
        os.close(fd)
        raise InstanceLockError(f"cannot lock {database_path}: {error.strerror}") from None
    return fd


def _named(database_path: str) -> str:
    """The database as given, with its real path when a symlink leads elsewhere."""
    real = os.path.realpath(database_path)
    if real == os.path.abspath(database_path):
        return database_path
    return f"{database_path} (= {real})"


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
        what = _named(database_path)
        what = f"shard {shard[0]}/{shard[1]} of {what}" if shard else what
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
