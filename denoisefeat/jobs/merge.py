"""Finish a job: merge the ablation tables into their stores, consolidate every store, summarise."""

from __future__ import annotations

import json

from denoisefeat.locking import TaskLock

from .spec import JobSpec, task_grid
from .state import task_state, write_json_atomic
from .tasks import ablation_table_path

__all__ = ["IncompleteJobError", "merge"]


class IncompleteJobError(RuntimeError):
    """Some tasks are not done; the message lists them and how to run them."""


def merge(spec: JobSpec, *, allow_incomplete: bool = False) -> dict:
    """Finalise the stores of a job once its tasks are done.

    For each configuration's store: the tables of its ablation tasks are concatenated, their
    ``p_adj`` recomputed (Benjamini-Hochberg over the whole merged table, as one
    :func:`~denoisefeat.analyses.ablation.ablation_scan` would) and written under
    ``attribution/ablation``; then the store's metadata is consolidated
    (:meth:`denoisefeat.store.RunStore.finalize`).  A summary is written to ``<jobs>/merged.json``.

    Parameters
    ----------
    spec : JobSpec
    allow_incomplete : bool
        Merge what is there even if some tasks are not done.

    Returns
    -------
    dict
        ``{"tasks": {state: count}, "stores": [{"configuration", "store", "samples", "samples_complete",
        "features_complete", "attribution_rows"}, ...]}``.

    Raises
    ------
    IncompleteJobError
        Some tasks are not done and ``allow_incomplete`` is false.
    """
    from denoisefeat.store import FEATURES, RunStore

    grid = task_grid(spec)
    states = {task.id: task_state(spec.jobs_dir, task.id) for task in grid}
    pending = [task for task in grid if states[task.id].state != "done"]
    if pending and not allow_incomplete:
        listed = ", ".join(f"{t.index} {t.id} ({states[t.id].state})" for t in pending[:8])
        more = f" and {len(pending) - 8} more" if len(pending) > 8 else ""
        raise IncompleteJobError(
            f"{len(pending)} of {len(grid)} tasks are not done: {listed}{more}. Run them "
            f"(`denoisefeat jobs run {spec.path} --task I` or `--all`), or merge anyway with --allow-incomplete."
        )
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.state] = counts.get(state.state, 0) + 1
    summary = {"tasks": counts, "stores": []}
    with TaskLock(spec.jobs_dir / "tasks" / "merge.lock"):
        for config in spec.configs:
            entry = {"configuration": config.name, "store": str(config.store), "samples": spec.samples,
                     "samples_complete": 0, "features_complete": None, "attribution_rows": None}
            summary["stores"].append(entry)
            if not config.store.exists():
                continue
            store = RunStore.open(config.store)
            entry["samples_complete"] = int(store.completed().sum())
            if store.holds(FEATURES):
                entry["features_complete"] = int(store.features_completed().sum())
            tables = [ablation_table_path(spec, t) for t in grid
                      if t.kind == "ablation" and t.config == config and states[t.id].state == "done"]
            if tables:
                frame = _merged_table(tables)
                from denoisefeat.analyses.table import write_attribution

                write_attribution(store, frame, name="ablation", overwrite=True)
                entry["attribution_rows"] = len(frame)
            store.finalize()
        write_json_atomic(spec.jobs_dir / "merged.json", summary)
    return summary


def _merged_table(paths):
    import pandas as pd

    from denoisefeat.analyses.table import benjamini_hochberg, validate

    frames = []
    for path in paths:
        table = json.loads(path.read_text())
        frames.append(pd.DataFrame(table["data"], columns=table["columns"]))
    frame = pd.concat(frames, ignore_index=True)
    frame["p_adj"] = benjamini_hochberg(frame["p"].to_numpy())
    return validate(frame)
