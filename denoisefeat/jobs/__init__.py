"""Batch jobs: one TOML spec, a job array of resumable tasks, merged zarr stores.

* :mod:`.spec` — the spec, validated before anything runs (:func:`load_spec`), and its task grid;
* :mod:`.tasks` — run one task (:func:`run_task`): lock, compute only what it owns, mark it done;
* :mod:`.state` — markers, locks and failure notes, and what they say (:func:`task_state`);
* :mod:`.runner` — every task on this machine in a process pool (:func:`run_all`), :func:`status`;
* :mod:`.merge` — ablation tables into the stores, consolidated metadata (:func:`merge`);
* :mod:`.submit` — PBS Pro / SLURM array scripts and their submission (:func:`submit`);
* :mod:`.lazy` — open a big store lazily with dask (:func:`open_lazy`).

The command line is ``denoisefeat jobs validate|submit|run|status|merge SPEC``; see ``hpc/README.md``.
"""

from denoisefeat.locking import TaskLockedError

from .lazy import open_lazy
from .merge import IncompleteJobError, merge
from .runner import Outcome, run_all, status
from .spec import (
    AblationSpec,
    ClusterSpec,
    Config,
    FeaturesSpec,
    JobSpec,
    SpecError,
    Task,
    check_spec,
    load_spec,
    parse_spec,
    task_grid,
)
from .state import TaskState, task_state
from .submit import SubmitError, job_scripts, submit
from .tasks import run_task

__all__ = [
    "AblationSpec",
    "ClusterSpec",
    "Config",
    "FeaturesSpec",
    "IncompleteJobError",
    "JobSpec",
    "Outcome",
    "SpecError",
    "SubmitError",
    "Task",
    "TaskLockedError",
    "TaskState",
    "check_spec",
    "job_scripts",
    "load_spec",
    "merge",
    "open_lazy",
    "parse_spec",
    "run_all",
    "run_task",
    "status",
    "submit",
    "task_grid",
    "task_state",
]
