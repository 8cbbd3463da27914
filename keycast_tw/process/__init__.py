"""Process edges of the daemon: stale pidfiles, the instance lock, signals and exit status."""

from keycast_tw.process.lock import (
    InstanceLock,
    InstanceLockError,
    acquire_instance_lock,
    lock_path_for,
)
from keycast_tw.process.pidfile import clean_stale_pidfile, pidfile_holder
from keycast_tw.process.signals import fatal, install_signal_handlers

__all__ = [
    "InstanceLock",
    "InstanceLockError",
    "acquire_instance_lock",
    "clean_stale_pidfile",
    "fatal",
    "install_signal_handlers",
    "lock_path_for",
    "pidfile_holder",
]
