"""``denoisefeat jobs ...``: validate a spec, run tasks (one array element, or all), status, merge, submit.

Importing this module is cheap (no torch): the heavy imports happen inside the commands.
Exit status: 0 success, 1 a task failed or is already running elsewhere, 2 a spec or usage error.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Batch jobs from one TOML spec: validate, submit to PBS/SLURM, run tasks, status, merge.",
                  no_args_is_help=True)
console = Console(stderr=True)
_ARRAY_VARS = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX")


def _fail(message: str, code: int) -> typer.Exit:
    from rich.markup import escape  # spec messages name [sections]: text, never markup

    console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(spec: Path, *, check_model: bool):
    from .spec import SpecError, load_spec

    try:
        return load_spec(spec, check_model=check_model)
    except (SpecError, FileNotFoundError) as err:
        raise _fail(str(err), 2) from None


@app.command("validate")
def validate(spec: Path = typer.Argument(..., help="TOML job spec.")) -> None:
    """Check a spec against its model (layers, conditions) and show its tasks per kind."""
    from collections import Counter

    from .spec import task_grid

    job = _load(spec, check_model=True)
    grid = task_grid(job)
    kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(t.kind for t in grid).items())
    typer.echo(f"{spec}: valid; {len(grid)} tasks ({kinds}); {len(job.configs)} store(s): "
               + ", ".join(str(c.store) for c in job.configs))


@app.command("run")
def run(
    spec: Path = typer.Argument(..., help="TOML job spec."),
    task: int = typer.Option(None, "--task", help="Task index (default: $SLURM_ARRAY_TASK_ID or $PBS_ARRAY_INDEX)."),
    offset: int = typer.Option(0, "--offset", help="Added to the array index from the environment."),
    all_: bool = typer.Option(False, "--all", help="Run every task that is not done, here."),
    workers: int = typer.Option(1, "--workers", "-j", help="With --all: processes running tasks at once."),
) -> None:
    """Run one task of SPEC (what an array element calls), or every task with --all."""
    from rich.markup import escape

    from denoisefeat.locking import TaskLockedError

    from .spec import SpecError

    job = _load(spec, check_model=False)
    if all_:
        from .runner import run_all

        try:
            outcome = run_all(job, workers=workers, progress=True)
        except ValueError as err:
            raise _fail(str(err), 2) from None
        typer.echo(f"ran {len(outcome.ran)}, already done {len(outcome.skipped)}, failed {len(outcome.failed)}")
        for task_id, error in outcome.failed.items():
            console.print(f"[red]failed[/] {escape(task_id)}: {escape(str(error))}", highlight=False, soft_wrap=True)
        if outcome.failed:
            raise typer.Exit(1)
        return
    if task is None:
        found = [(v, os.environ[v]) for v in _ARRAY_VARS if os.environ.get(v)]
        if not found:
            raise _fail("give --task I or --all, or set SLURM_ARRAY_TASK_ID / PBS_ARRAY_INDEX.", 2)
        name, value = found[0]
        if not value.isdigit():
            raise _fail(f"${name} is {value!r}, not an array index.", 2)
        task = offset + int(value)
    from .tasks import run_task

    try:
        ran = run_task(job, task)
    except IndexError as err:
        raise _fail(str(err), 2) from None
    except TaskLockedError as err:
        raise _fail(str(err), 1) from None
    except SpecError as err:
        raise _fail(str(err), 2) from None
    except Exception as err:  # the failure note holds it too
        if os.environ.get("DENOISEFEAT_DEBUG"):
            raise
        raise _fail(f"task {task} failed: {type(err).__name__}: {err}", 1) from None
    typer.echo(f"task {task}: {'done' if ran else 'already done'}")


@app.command("status")
def status(spec: Path = typer.Argument(..., help="TOML job spec.")) -> None:
    """A table of tasks: done, running (host, pid), failed (the error), missing."""
    from collections import Counter

    from .runner import status as states

    job = _load(spec, check_model=False)
    rows = states(job)
    colours = {"done": "green", "running": "cyan", "failed": "red", "missing": "yellow"}
    from rich.markup import escape

    table = Table("index", "task", "state", "detail")
    for task, state in rows:
        table.add_row(str(task.index), escape(task.id), f"[{colours[state.state]}]{state.state}[/]",
                      escape(state.detail))
    out = Console(width=max(120, Console().width))
    out.print(table)
    counts = Counter(state.state for _, state in rows)
    out.print(", ".join(f"{counts.get(s, 0)} {s}" for s in colours))


@app.command("merge")
def merge(
    spec: Path = typer.Argument(..., help="TOML job spec."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Merge even if some tasks are not done."),
) -> None:
    """Merge ablation tables into the stores, consolidate every store, print a summary."""
    from rich.markup import escape

    from .merge import IncompleteJobError
    from .merge import merge as merge_job

    job = _load(spec, check_model=False)
    try:
        summary = merge_job(job, allow_incomplete=allow_incomplete)
    except IncompleteJobError as err:
        raise _fail(str(err), 1) from None
    table = Table("configuration", "store", "samples", "features", "attribution rows")
    for entry in summary["stores"]:
        feats = "-" if entry["features_complete"] is None else f"{entry['features_complete']}/{entry['samples']}"
        rows = "-" if entry["attribution_rows"] is None else str(entry["attribution_rows"])
        table.add_row(escape(str(entry["configuration"])), escape(str(entry["store"])),
                      f"{entry['samples_complete']}/{entry['samples']}", feats, rows)
    Console(width=max(120, Console().width)).print(table)


@app.command("submit")
def submit(
    spec: Path = typer.Argument(..., help="TOML job spec."),
    scheduler: str = typer.Option(None, "--scheduler", help="pbs or slurm (default: [cluster].scheduler)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write the scripts and show the commands."),
) -> None:
    """Write the array job scripts (and a dependent merge job) and submit them with qsub/sbatch."""
    from .submit import SCHEDULERS, SubmitError
    from .submit import submit as submit_job

    if scheduler is not None and scheduler not in SCHEDULERS:
        raise _fail(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}.", 2)
    job = _load(spec, check_model=not dry_run)
    try:
        record = submit_job(job, scheduler=scheduler, dry_run=dry_run)
    except SubmitError as err:
        raise _fail(str(err), 1) from None
    for name, path in record["scripts"].items():
        typer.echo(f"{name}: {path}" + (f"  -> job {record['jobs'][name]}" if name in record["jobs"] else ""))
    if dry_run:
        typer.echo("would run:")
        for cmd in record["commands"]:
            typer.echo("  " + " ".join(cmd))
