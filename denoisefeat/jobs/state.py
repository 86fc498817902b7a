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

Task locks are :class:`denoisefeat.locking.TaskLock`s: a duplicate of a live task refuses to start
and names the holder's PID and host, while a task whose holder was killed is simply taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from denoisefeat.locking import read_json

__all__ = ["STATES", "TaskState", "task_paths", "task_state", "write_json_atomic"]

#: Possible task states, in the order ``jobs status`` sorts them.
STATES = ("done", "running", "failed", "missing")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one, durably.

    Parameters
    ----------
    path : Path
        Destination (its folder is created if needed).
    payload : dict or list
        JSON-able content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def task_paths(jobs_dir: Path, task_id: str) -> dict[str, Path]:
    """The marker, lock and failure-note paths of a task.

    Parameters
    ----------
    jobs_dir : Path
        The spec's jobs folder.
    task_id : str

    Returns
    -------
    dict of str to Path
        ``done``, ``lock`` and ``failed``.
    """
    folder = jobs_dir / "tasks"
    return {"done": folder / f"{task_id}.done.json", "lock": folder / f"{task_id}.lock",
            "failed": folder / f"{task_id}.failed.json"}


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
    """Read a task's state from its marker, lock and failure note.

    Parameters
    ----------
    jobs_dir : Path
        The spec's jobs folder.
    task_id : str

    Returns
    -------
    TaskState
    """
    paths = task_paths(jobs_dir, task_id)
    if paths["done"].exists():
        return TaskState("done", read_json(paths["done"]).get("finished", ""))
    if _held(paths["lock"]):
        owner = read_json(paths["lock"])
        return TaskState("running", f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                                    f"since {owner.get('started', '?')}")
    if paths["failed"].exists():
        return TaskState("failed", read_json(paths["failed"]).get("error", ""))
    if paths["lock"].exists():
        owner = read_json(paths["lock"])
        return TaskState("failed", f"killed (pid {owner.get('pid', '?')} on {owner.get('host', '?')} started "
                                   f"{owner.get('started', '?')} and never finished)")
    return TaskState("missing")
