"""Job scripts for SLURM and PBS Pro, and their submission with ``sbatch`` / ``qsub``.

A job is at most three submissions, chained by dependencies:

1. ``stage0``: an array over the extraction and ablation tasks (independent of each other);
2. ``stage1``: an array over the feature tasks (``afterok`` on stage 0: a feature task reads the
   x̂0 its extraction task wrote);
3. ``merge``: one small job, ``afterok`` on the arrays, running ``denoisefeat jobs merge``.

Each array element runs ``denoisefeat jobs run SPEC --offset K``: its task is K plus the array index
(``SLURM_ARRAY_TASK_ID`` / ``PBS_ARRAY_INDEX``).  A task that is done exits at once, so submitting
the same spec again reruns only what failed or never ran.  Scripts are written to
``<jobs>/scripts/``, per-task logs to ``<jobs>/logs/``, the job ids to ``<jobs>/submitted.json``.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from .spec import ClusterSpec, JobSpec, task_grid
from .state import write_json_atomic

__all__ = ["SCHEDULERS", "SubmitError", "job_scripts", "submit"]

#: Batch systems :func:`submit` writes scripts for.
SCHEDULERS = ("pbs", "slurm")


class SubmitError(RuntimeError):
    """``sbatch``/``qsub`` is missing, failed, or printed no job id."""


def _mem(mem: str, scheduler: str) -> str:
    number, unit = re.match(r"^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)", mem).groups()
    unit = (unit or "m").lower()
    return f"{number}{unit.upper()}" if scheduler == "slurm" else f"{number}{unit}b"


def _pbs_walltime(walltime: str) -> str:
    days, _, clock = walltime.rpartition("-")
    if not days:
        return clock
    hours, rest = clock.split(":", 1)
    return f"{int(days) * 24 + int(hours):02d}:{rest}"


def _activation(cluster: ClusterSpec) -> list[str]:
    if cluster.conda_env:
        return ['eval "$(conda shell.bash hook)"', f"conda activate {shlex.quote(cluster.conda_env)}"]
    if cluster.venv:
        return [f". {shlex.quote(str(Path(cluster.venv).expanduser()))}/bin/activate"]
    return []


def _command(cluster: ClusterSpec) -> str:
    if cluster.conda_env or cluster.venv:
        return "denoisefeat"
    return shlex.quote(shutil.which("denoisefeat") or "denoisefeat")  # the install that wrote the script


def _header(spec: JobSpec, *, scheduler: str, name: str, count: int | None, logs: Path, merge: bool) -> list[str]:
    """Scheduler directives: an array of ``count`` elements, or one job (``count`` None)."""
    c = spec.cluster
    cpus = 1 if merge else c.cpus
    gpus = None if merge else c.gpus
    if scheduler == "slurm":
        head = [f"#SBATCH --job-name={name}"]
        if count is not None:
            head.append(f"#SBATCH --array=0-{count - 1}" + (f"%{c.max_parallel}" if c.max_parallel else ""))
            head += [f"#SBATCH --output={logs}/%x-%A_%a.out", f"#SBATCH --error={logs}/%x-%A_%a.err"]
        else:
            head += [f"#SBATCH --output={logs}/%x-%j.out", f"#SBATCH --error={logs}/%x-%j.err"]
        head += [f"#SBATCH --time={c.walltime}"] if c.walltime else []
        head += [f"#SBATCH --cpus-per-task={cpus}"] if cpus else []
        head += [f"#SBATCH --mem={_mem(c.mem, 'slurm')}"] if c.mem else []
        head += [f"#SBATCH --gres=gpu:{gpus}"] if gpus else []
        head += [f"#SBATCH --partition={c.queue}"] if c.queue else []
        head += [f"#SBATCH --account={c.account}"] if c.account else []
    else:
        select = f"select=1:ncpus={cpus or 1}" + (f":mem={_mem(c.mem, 'pbs')}" if c.mem else "")
        select += f":ngpus={gpus}" if gpus else ""
        head = [f"#PBS -N {name}", f"#PBS -l {select}"]
        if count is not None and count > 1:  # PBS Pro refuses an array of one subjob
            head.append(f"#PBS -J 0-{count - 1}")
            head += [f"#PBS -W max_run_subjobs={c.max_parallel}"] if c.max_parallel else []
            head += [f"#PBS -o {logs}/{name}.^array_index^.out", f"#PBS -e {logs}/{name}.^array_index^.err"]
        else:
            head += [f"#PBS -o {logs}/{name}.out", f"#PBS -e {logs}/{name}.err"]
        head += [f"#PBS -l walltime={_pbs_walltime(c.walltime)}"] if c.walltime else []
        head += [f"#PBS -q {c.queue}"] if c.queue else []
        head += [f"#PBS -A {c.account}"] if c.account else []
    prefix = "#SBATCH" if scheduler == "slurm" else "#PBS"
    head += [line for line in c.extra_header if line.startswith(prefix)]
    return head


def job_scripts(spec: JobSpec, *, scheduler: str) -> dict[str, str]:
    """The scripts of a job: ``stage0`` (array), ``stage1`` (array, when there are feature tasks), ``merge``.

    Parameters
    ----------
    spec : JobSpec
    scheduler : {"pbs", "slurm"}

    Returns
    -------
    dict of str to str
        Script name to its text (bash with ``#PBS`` / ``#SBATCH`` directives).

    Notes
    -----
    ``[cluster].extra_header`` lines are copied into the header of the matching scheduler only
    (``#PBS ...`` lines into PBS scripts, ``#SBATCH ...`` into SLURM ones).  The merge job asks for
    one CPU, no GPU, and the same walltime, queue and account.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}.")
    grid = task_grid(spec)
    logs = spec.jobs_dir / "logs"
    spec_path = shlex.quote(str(spec.path))
    cmd = _command(spec.cluster)
    body = ["set -euo pipefail", *_activation(spec.cluster), *spec.cluster.setup,
            f"cd {shlex.quote(str(spec.path.parent))}"]
    index_var = "SLURM_ARRAY_TASK_ID" if scheduler == "slurm" else "PBS_ARRAY_INDEX"
    scripts = {}
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", spec.path.stem)
    for stage in sorted({t.stage for t in grid}):
        tasks = [t for t in grid if t.stage == stage]
        offset, count = tasks[0].index, len(tasks)
        name = f"dft-{stem}-s{stage}"
        if scheduler == "pbs" and count == 1:
            run = f"{cmd} jobs run {spec_path} --task {offset}"
        else:
            run = f"{cmd} jobs run {spec_path} --offset {offset}  # task = {offset} + ${index_var}"
        head = _header(spec, scheduler=scheduler, name=name, count=count, logs=logs, merge=False)
        scripts[f"stage{stage}"] = "\n".join(["#!/bin/bash", *head, *body, run]) + "\n"
    head = _header(spec, scheduler=scheduler, name=f"dft-{stem}-merge", count=None, logs=logs, merge=True)
    scripts["merge"] = "\n".join(["#!/bin/bash", *head, *body, f"{cmd} jobs merge {spec_path}"]) + "\n"
    return scripts


def _job_id(scheduler: str, output: str) -> str:
    text = output.strip().splitlines()[-1].strip() if output.strip() else ""
    if scheduler == "slurm":
        match = re.fullmatch(r"(\d+)(;\S+)?", text) or re.search(r"Submitted batch job (\d+)", output)
    else:
        match = re.fullmatch(r"(\d+(\[\])?(\.[\w.-]+)?)", text)
    if match is None:
        raise SubmitError(f"Could not read a job id from the {scheduler} submission output {output!r}.")
    return match.group(1)


def submit(spec: JobSpec, *, scheduler: str | None = None, dry_run: bool = False) -> dict:
    """Write the job scripts and, unless ``dry_run``, submit them with their dependencies.

    Parameters
    ----------
    spec : JobSpec
    scheduler : {"pbs", "slurm"}, optional
        Default: ``[cluster].scheduler``.
    dry_run : bool
        Only write the scripts (and return the commands that would submit them).

    Returns
    -------
    dict
        ``{"scheduler", "scripts": {name: path}, "commands": [[arg, ...], ...], "jobs": {name: id}}``
        (``jobs`` empty on a dry run, and ``commands`` then show ``<stage0>`` for ids not known yet).
        A real submission is also appended to ``<jobs>/submitted.json``.

    Raises
    ------
    SubmitError
        ``sbatch``/``qsub`` not found, exiting with an error, or printing no job id.
    """
    scheduler = scheduler or spec.cluster.scheduler
    texts = job_scripts(spec, scheduler=scheduler)
    folder = spec.jobs_dir / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    (spec.jobs_dir / "logs").mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        path = folder / f"{name}.{scheduler}.sh"
        path.write_text(text)
        path.chmod(0o755)
        paths[name] = str(path)
    exe = "sbatch" if scheduler == "slurm" else "qsub"
    if not dry_run and shutil.which(exe) is None:
        raise SubmitError(f"{exe} is not on PATH: submit from a {scheduler.upper()} login node, or use --dry-run.")
    jobs: dict[str, str] = {}
    commands = []
    try:
        for i, (name, path) in enumerate(paths.items()):
            needs = [jobs.get(n, f"<{n}>") for n in list(paths)[:i]]  # stage k after stages < k; merge after all
            cmd = [exe, "--parsable"] if scheduler == "slurm" else [exe]
            if needs:
                depend = "afterok:" + ":".join(needs)
                cmd += [f"--dependency={depend}"] if scheduler == "slurm" else ["-W", f"depend={depend}"]
            cmd.append(path)
            commands.append(cmd)
            if dry_run:
                continue
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=spec.path.parent)
            if result.returncode != 0:
                raise SubmitError(f"{' '.join(cmd)} failed ({result.returncode}): "
                                  f"{result.stderr.strip() or result.stdout.strip()}"
                                  + (f" (already submitted: {jobs})" if jobs else ""))
            jobs[name] = _job_id(scheduler, result.stdout)
    finally:
        if jobs:  # record what was submitted, even when a later submission failed
            history_path = spec.jobs_dir / "submitted.json"
            history = json.loads(history_path.read_text()) if history_path.exists() else []
            history.append({"scheduler": scheduler, "scripts": paths, "commands": commands, "jobs": jobs,
                            "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
            write_json_atomic(history_path, history)
    return {"scheduler": scheduler, "scripts": paths, "commands": commands, "jobs": jobs}
