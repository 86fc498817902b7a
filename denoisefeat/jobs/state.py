"""What each task has done, on disk: completion markers, lock files and failure notes.

Everything lives in the spec's jobs folder (``<store stem>.jobs/`` beside the ``[run]`` store)::

    study.jobs/
      tasks/<task id>.done.json     written (atomically, fsynced) after the task's data is durable
      tasks/<task id>.lock          {"pid", "host", "started"}, flock-ed while the task runs
      tasks/<task id>.failed.json   the error of the last failed attempt
      ablation/<task id>.json       an ablation task's table, merged by ``jobs merge``
      init/<store>.<part>.{lock,done}  first-writer initialisation of a shared store (see runner)
      logs/  scripts/  submitted.json  merged.json

A task is *done* when its marker exists, *running* when another process holds its lock, *failed*
when an attempt started (lock file or failure note) but neither finished nor holds the lock (an
exception, or a process killed by SIGKILL, OOM or the walltime), *missing* otherwise.

Locks are ``flock`` locks on the lock file, which the kernel (or the NFS server's lock manager)
releases when the holder dies however it dies: a duplicate of a live task refuses to start and
names the holder's PID and host, while a task whose holder was killed is simply taken over.  Lock
files are never deleted (deleting one while another process waits on it would let two processes
hold "the" lock).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "STATES", "TaskLock", "TaskLockedError", "TaskState", "flock", "task_paths", "task_state", "write_json_atomic",
]

#: Possible task states, in the order ``jobs status`` sorts them.
STATES = ("done", "running", "failed", "missing")


class TaskLockedError(RuntimeError):
    """Another live process runs the same task (the message names its PID and host)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def task_paths(jobs_dir: Path, task_id: str) -> dict[str, Path]:
    """The marker, lock and failure-note paths of a task."""
    folder = jobs_dir / "tasks"
    return {"done": folder / f"{task_id}.done.json", "lock": folder / f"{task_id}.lock",
            "failed": folder / f"{task_id}.failed.json"}


def flock(fd, operation: int, *, path: Path) -> None:
    """``fcntl.flock`` with a clear error where the file system has no locks."""
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
            owner = _read_json(self.path)
            holder = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {owner.get('started', '?')}"
            if self.what is not None:
                raise TaskLockedError(f"{self.what} is being written by another live process ({holder}); "
                                      "refusing to write it twice. Wait for it to finish.") from None
            raise TaskLockedError(
                f"Task {self.path.name.removesuffix('.lock')!r} is already running ({holder}); refusing to run it twice."
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


def _held(lock: Path) -> bool:
    """Whether some process holds ``lock`` now (a probe: takes and drops it when free)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


@dataclass(frozen=True)
class TaskState:
    """The state of one task (see :data:`STATES`) and what its files say.

    Attributes
    ----------
    state : str
    detail : str
        Host and PID of a running task, the error of a failed one, the finishing time of a done one.
    """

    state: str
    detail: str = ""


def task_state(jobs_dir: Path, task_id: str) -> TaskState:
    """Read a task's state from its marker, lock and failure note."""
    paths = task_paths(jobs_dir, task_id)
    if paths["done"].exists():
        return TaskState("done", _read_json(paths["done"]).get("finished", ""))
    if _held(paths["lock"]):
        owner = _read_json(paths["lock"])
        return TaskState("running", f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                                    f"since {owner.get('started', '?')}")
    if paths["failed"].exists():
        return TaskState("failed", _read_json(paths["failed"]).get("error", ""))
    if paths["lock"].exists():
        owner = _read_json(paths["lock"])
        return TaskState("failed", f"killed (pid {owner.get('pid', '?')} on {owner.get('host', '?')} started "
                                   f"{owner.get('started', '?')} and never finished)")
    return TaskState("missing")
