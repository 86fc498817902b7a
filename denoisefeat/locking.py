"""Exclusive file locks for the writers of a store or a cluster task, released however the holder dies.

Locks are ``flock`` locks on a lock file, which the kernel (or the NFS server's lock manager)
releases when the holder dies, however it dies: a second live writer is refused with the holder's
PID and host, while a lock whose holder was killed is simply taken over.  Lock files are never
deleted (deleting one while another process waits on it would let two processes hold "the" lock).
:func:`denoisefeat.trace` locks a store it writes; :mod:`denoisefeat.jobs` locks each task.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["TaskLock", "TaskLockedError", "flock", "read_json"]


class TaskLockedError(RuntimeError):
    """Another live process runs the same task (the message names its PID and host)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when it is missing, empty or unreadable.

    Parameters
    ----------
    path : Path

    Returns
    -------
    dict
    """
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def flock(fd, operation: int, *, path: Path) -> None:
    """``fcntl.flock`` with a clear error where the file system has no locks.

    Parameters
    ----------
    fd : int or file
        The open lock file.
    operation : int
        ``fcntl.LOCK_EX``, ``fcntl.LOCK_SH`` or ``fcntl.LOCK_UN``, optionally ``| fcntl.LOCK_NB``.
    path : Path
        The lock file's path, for the message.

    Raises
    ------
    OSError
        The file system has no locks (the message says which file systems do).
    BlockingIOError
        ``LOCK_NB`` and another process holds the lock.
    """
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise OSError(err.errno, f"Cannot lock {path}: its file system has no file locks ({err.strerror}). "
                          "Put the store on a file system with locking (NFS with lockd, Lustre mounted with "
                          "-o flock, GPFS, a local disk).") from err
        raise


class TaskLock:
    """An exclusive, non-blocking lock on a task: ``with TaskLock(path):`` or :meth:`acquire`/:meth:`release`.

    Parameters
    ----------
    path : Path
        The lock file (created if needed, never deleted).
    what : str, optional
        What the lock protects, for the refusal message (default: the task named by the file).

    Raises
    ------
    TaskLockedError
        On entry, when another live process holds the lock.
    """

    def __init__(self, path: Path, *, what: str | None = None):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(5):  # `jobs status` probes a lock for microseconds: don't mistake it for a holder
            try:
                flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path=self.path)
                break
            except BlockingIOError:
                time.sleep(0.05 * (attempt + 1))
            except OSError:
                os.close(fd)
                raise
        else:
            os.close(fd)
            owner = read_json(self.path)
            holder = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {owner.get('started', '?')}"
            if self.what is not None:
                raise TaskLockedError(f"{self.what} is being written by another live process ({holder}); "
                                      "refusing to write it twice. Wait for it to finish.") from None
            raise TaskLockedError(
                f"Task {self.path.name.removesuffix('.lock')!r} is already running ({holder}); "
                "refusing to run it twice."
            ) from None
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TaskLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
