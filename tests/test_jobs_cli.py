"""`denoisefeat jobs ...`: array index from the environment, status table, errors, --all in a pool, merge."""

import json

import pytest
from typer.testing import CliRunner

from denoisefeat.cli import app

SPEC = """
[run]
model = "tiny-class-unet"
store = "out.zarr"
samples = 4
steps = 2
batch_size = 2
labels = [0, 1, 2, 3]

[features]
metrics = ["edge_density"]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def _status_lines(runner, spec):
    res = runner.invoke(app, ["jobs", "status", str(spec)])
    assert res.exit_code == 0, res.output
    return {line.split()[3]: line.split()[5] for line in res.output.splitlines() if "-default-2-" in line}


def test_array_index_from_environment_and_status(spec):
    runner = CliRunner()
    res = runner.invoke(app, ["jobs", "run", str(spec)], env={"SLURM_ARRAY_TASK_ID": "1"})
    assert res.exit_code == 0, res.output
    assert "task 1: done" in res.output
    res = runner.invoke(app, ["jobs", "run", str(spec), "--offset", "1"], env={"PBS_ARRAY_INDEX": "0"})
    assert res.exit_code == 0 and "task 1: already done" in res.output
    states = _status_lines(runner, spec)
    assert states == {"extract-default-2-s0-2": "missing", "extract-default-2-s2-4": "done",
                      "features-default-2-s0-2": "missing", "features-default-2-s2-4": "missing"}
    res = runner.invoke(app, ["jobs", "run", str(spec), "--task", "2"])  # features of an untraced chunk
    assert res.exit_code == 1 and "needs extraction task 'extract-default-2-s0-2'" in res.output
    assert _status_lines(runner, spec)["features-default-2-s0-2"] == "failed"
    res = runner.invoke(app, ["jobs", "run", str(spec), "--task", "9"])
    assert res.exit_code == 2 and "4 tasks" in res.output
    res = runner.invoke(app, ["jobs", "run", str(spec)], env={"SLURM_ARRAY_TASK_ID": "", "PBS_ARRAY_INDEX": ""})
    assert res.exit_code == 2 and "--task" in res.output
    res = runner.invoke(app, ["jobs", "merge", str(spec)])
    assert res.exit_code == 1 and "3 of 4 tasks are not done" in res.output


def test_validate_and_dry_run(spec):
    runner = CliRunner()
    res = runner.invoke(app, ["jobs", "validate", str(spec)])
    assert res.exit_code == 0 and "4 tasks (2 extract, 2 features)" in res.output
    spec.write_text(SPEC.replace("steps", "stesp"))
    res = runner.invoke(app, ["jobs", "validate", str(spec)])
    assert res.exit_code == 2 and "Did you mean 'steps'" in res.output
    spec.write_text(SPEC + '[cluster]\nscheduler = "pbs"\n')
    res = runner.invoke(app, ["jobs", "submit", str(spec), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "qsub -W depend=afterok:<stage0>" in res.output
    assert "#PBS -J 0-1" in (spec.parent / "out.jobs" / "scripts" / "stage0.pbs.sh").read_text()
    res = runner.invoke(app, ["jobs", "submit", str(spec), "--scheduler", "lsf", "--dry-run"])
    assert res.exit_code == 2 and "pbs, slurm" in res.output


@pytest.mark.slow
def test_all_in_a_process_pool_then_merge(spec):
    from denoisefeat.step_features import load_features
    from denoisefeat.store import open_run

    runner = CliRunner()
    res = runner.invoke(app, ["jobs", "run", str(spec), "--all", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "ran 4, already done 0, failed 0" in res.output
    assert set(_status_lines(runner, spec).values()) == {"done"}
    res = runner.invoke(app, ["jobs", "merge", str(spec)])
    assert res.exit_code == 0, res.output
    summary = json.loads((spec.parent / "out.jobs" / "merged.json").read_text())
    assert summary["stores"][0]["samples_complete"] == 4 and summary["stores"][0]["features_complete"] == 4
    run = open_run(spec.parent / "out.zarr")
    assert run.attrs["model_id"] == "tiny-class-unet" and run["x0"].shape[:2] == (4, 2)
    assert load_features(run)["edge_density"].shape == (4, 2)
