"""Stale pidfile clean-up, run before twistd's own pidfile check.

twistd's ``checkPID`` refuses to start when the pidfile holds garbage, and when it holds any
live PID, our own included. In a container the daemon is PID 1 on every start, so a pidfile
left on a persistent volume by a killed container holds ``1``: without this clean-up the daemon
would refuse to start forever against itself (keycast-reference B9). The pidfile is only a
convenience for operators (``kill $(cat ...)``); the single-instance guarantee is the database
lock in :mod:`keycast_tw.process.lock`, so this module errs towards removing a pidfile it can
prove stale and leaves twistd to refuse only when a live twistd/keycast process owns it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from twisted.logger import Logger

_log = Logger(namespace="keycast_tw.process")

#: argv fragments that identify a process that may legitimately own our pidfile.
_OWNER_NAMES = ("twistd", "keycast")


def _owner_like(cmdline: bytes) -> bool:
    """True if a /proc cmdline looks like twistd or keycast (``python -m twisted`` too)."""
    args = [arg.decode("utf-8", "replace") for arg in cmdline.split(b"\0") if arg]
    for index, arg in enumerate(args):
        name = os.path.basename(arg)
        if any(owner in name for owner in _OWNER_NAMES):
            return True
        if arg == "-m" and index + 1 < len(args) and args[index + 1] in ("twisted", "twistd"):
            return True
    return False


def _read_cmdline(proc_root: str, pid: int) -> bytes | None:
    """The process's cmdline, ``b""`` if it is gone, None if it cannot be read."""
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return b""
    except OSError:
        return None


def clean_stale_pidfile(
    path: str | None,
    *,
    getpid: Callable[[], int] = os.getpid,
    kill: Callable[[int, int], None] = os.kill,
    proc_root: str = "/proc",
    log: Logger = _log,
) -> bool:
    """Remove ``path`` if it cannot belong to a running daemon; True if it was removed.

    Removed when it is empty or not a positive number, holds our own PID, holds a PID that no
    longer exists, or a PID whose ``<proc_root>/<pid>/cmdline`` is not twistd/keycast (the PID
    was reused). Kept when a live twistd/keycast process owns it, or when that cannot be
    decided (no procfs, or another user's process hidden by ``hidepid``): twistd then refuses
    with its own message. The log line is buffered by twisted.logger until twistd starts logging.
    """
    if not path:
        return False
    try:
        content = _read(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warn("Cannot read pidfile {path}: {reason}", path=path, reason=error.strerror)
        return False

    reason = _stale_reason(content, getpid=getpid, kill=kill, proc_root=proc_root)
    if reason is None:
        return False
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warn("Cannot remove stale pidfile {path}: {reason}", path=path, reason=error.strerror)
        return False
    log.warn("Removed stale pidfile {path}: {reason}", path=path, reason=reason)
    return True


def pidfile_holder(path: str | None) -> int | None:
    """The PID a pidfile names, if the file exists and holds one (read after the clean-up:
    what is left then belongs to a live daemon, or could not be proved stale)."""
    if not path:
        return None
    try:
        content = _read(path)
    except OSError:
        return None
    return int(content) if content.isdigit() else None


def _read(path: str) -> str:
    """What a pidfile holds (its first 64 characters, stripped); OSError as ``open`` raises."""
    with open(path, encoding="ascii", errors="replace") as handle:
        return handle.read(64).strip()


def _stale_reason(
    content: str, *, getpid: Callable[[], int], kill: Callable[[int, int], None], proc_root: str
) -> str | None:
    """Why a pidfile with ``content`` is stale, or None when it may be live."""
    if not content.isdigit() or int(content) <= 0:
        return "it holds no PID"
    pid = int(content)
    if pid == getpid():
        return f"it holds this process's own PID {pid} (restarted container)"
    other_user = False
    try:
        kill(pid, 0)
    except OSError as error:
        if error.errno == errno.ESRCH:
            return f"process {pid} is not running"
        if error.errno != errno.EPERM:
            return None
        other_user = True
    if not os.path.isdir(proc_root):
        return None
    cmdline = _read_cmdline(proc_root, pid)
    if cmdline is None:
        return None
    if cmdline == b"":
        # Gone since kill() (or a zombie) -- unless it belongs to another user and procfs hides
        # it (hidepid): then it exists and nothing proves it is not a daemon.
        return None if other_user else f"process {pid} is not running"
    if not _owner_like(cmdline):
        return f"PID {pid} now belongs to another program"
    return None
