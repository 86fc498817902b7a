"""Damaged stores and bad input (issue 15): a clear one-line error every time, and nothing lost."""

import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import denoisefeat as dft
from denoisefeat.cli import app
from denoisefeat.store import DamagedStoreError, RunStore, open_run
from denoisefeat.trajectory import trace

runner = CliRunner()


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _one_line_error(result, code=2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and "Loading pipeline" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def pipe():
    return dft.load_pipeline("tiny-class-unet")


@pytest.fixture()
def complete(pipe, tmp_path):
    """A complete 4-sample store (2 sample chunks) with recorded activations."""
    path = tmp_path / "S.zarr"
    trace(pipe, class_labels=[0, 1, 2, 3], steps=3, batch_size=2, store=path, record={"mid_block": "channel_mean"},
          model_id="tiny-class-unet")
    return path


# -- 1. out-of-range conditions; --overwrite never loses the old store -------------------------------
def test_labels_are_checked_against_the_model(pipe):
    with pytest.raises(ValueError, match="must be integers; got 'a'"):
        trace(pipe, class_labels=["a"], steps=2)
    with pytest.raises(ValueError, match=r"Class label 500 out of range: this model has \d+ classes"):
        trace(pipe, class_labels=[500], steps=2)


def test_jobs_validate_refuses_out_of_range_labels(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[run]\nmodel = "tiny-class-unet"\nstore = "o.zarr"\nsamples = 2\nsteps = 2\nlabels = [0, 999]\n')
    line = _one_line_error(runner.invoke(app, ["jobs", "validate", str(spec)]))
    assert "[run]" in line and "999 out of range" in line


def test_bad_label_with_overwrite_keeps_the_store(complete, tmp_path):
    before = _files(complete)
    line = _one_line_error(runner.invoke(app, ["extract", "tiny-class-unet", "--samples", "1", "--label", "999",
                                               "--steps", "3", "--out", str(complete), "--overwrite"]))
    assert "999 out of range" in line
    assert _files(complete) == before


def test_overwrite_that_fails_midway_leaves_the_old_store(pipe, complete, monkeypatch):
    import denoisefeat.trajectory as trajectory

    before = _files(complete)
    calls = {"n": 0}
    real = trajectory.DenoisingLoop.run

    def dies_on_second_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(trajectory.DenoisingLoop, "run", dies_on_second_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        trace(pipe, class_labels=[3, 2, 1, 0], steps=3, batch_size=2, store=complete, overwrite=True)
    assert _files(complete) == before
    monkeypatch.setattr(trajectory.DenoisingLoop, "run", real)
    run = trace(pipe, class_labels=[3, 2, 1, 0], steps=3, batch_size=2, store=complete, overwrite=True)
    assert run.path == complete and list(open_run(complete).dataset["class_label"].values) == [3, 2, 1, 0]
    assert sorted(p.name for p in complete.parent.iterdir()) == [".S.zarr.lock", "S.zarr"]


def test_bad_backend_is_refused_before_the_store_exists(pipe, tmp_path):
    with pytest.raises(ValueError, match="backend must be"):
        trace(pipe, class_labels=[0], steps=2, store=tmp_path / "b.zarr", record="mid_block", backend="jax")
    assert not (tmp_path / "b.zarr").exists()


# -- 2, 3. missing and undecodable chunks are errors; check lists them; --repair restores bit for bit -
def test_missing_chunk_is_an_error_naming_array_and_samples(complete):
    (complete / "x0" / "c" / "1" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(DamagedStoreError, match=r"x0 \(missing chunks, samples 2–3\)"):
        open_run(complete)
    for command in (["info", str(complete)], ["analyze", str(complete)], ["report", str(complete), "-o", "r.html"]):
        assert "is damaged: x0 (missing chunks, samples 2–3)" in _one_line_error(runner.invoke(app, command))


def test_check_lists_damage_and_repair_restores_bit_for_bit(complete, tmp_path):
    good = tmp_path / "good.zarr"
    shutil.copytree(complete, good)
    assert runner.invoke(app, ["check", str(complete)]).exit_code == 0
    (complete / "x0" / "c" / "1" / "0" / "0" / "0" / "0").unlink()
    chunk = complete / "acts" / "mid_block" / "channel_mean" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    result = runner.invoke(app, ["check", str(complete)])
    assert result.exit_code == 1
    assert "missing     x0/c/1/0/0/0/0 samples 2–3" in result.output
    assert "undecodable acts/mid_block/channel_mean/c/0/0/0 samples 0–1" in result.output
    line = _one_line_error(runner.invoke(app, ["analyze", str(complete)]))  # a decode error, not a traceback
    assert "acts/mid_block/channel_mean (undecodable chunks, samples 0–1)" in line or "x0 (missing" in line
    result = runner.invoke(app, ["extract", "tiny-class-unet", "--label", "0", "--label", "1", "--label", "2",
                                 "--label", "3", "--steps", "3", "--batch-size", "2", "--record",
                                 "mid_block=channel_mean", "--out", str(complete), "--resume", "--repair"])
    assert result.exit_code == 0, result.output
    assert _files(complete) == _files(good)


def test_truncated_feature_chunk_is_reported(pipe, complete):
    from denoisefeat.features import features

    features(complete, metrics=["edge_density"])
    name = next(p for p in (complete / "features").iterdir() if p.is_dir() and p.name != "complete")
    chunk = next(p for p in sorted(name.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-3])
    line = _one_line_error(runner.invoke(app, ["analyze", str(complete), "--metrics", "edge_density"]))
    assert f"features/{name.name} (undecodable chunks" in line


# -- 4. messages -----------------------------------------------------------------------------------
def test_missing_array_and_bad_schema_version_messages(complete):
    shutil.rmtree(complete / "complete")
    meta = complete / "zarr.json"
    text = meta.read_text()
    import json

    doc = json.loads(text)
    doc["consolidated_metadata"] = None
    meta.write_text(json.dumps(doc))
    assert "its array 'complete' (which samples are finished) is missing" in _one_line_error(
        runner.invoke(app, ["info", str(complete)]))
    doc["attributes"]["denoisefeat"]["schema_version"] = "one"
    meta.write_text(json.dumps(doc))
    assert "schema version is 'one', not an integer" in _one_line_error(runner.invoke(app, ["info", str(complete)]))


# -- 5. user text is text --------------------------------------------------------------------------
def test_prompt_with_markup_is_printed_as_text(tmp_path):
    out = tmp_path / "p.zarr"
    prompt = "a [bold]red[/] cube [/]"
    result = runner.invoke(app, ["extract", "tiny-sd", "--prompt", prompt, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert prompt in result.output


def test_spec_errors_keep_their_section_names(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[run]\nmodel = "tiny-unet"\nstore = "o.zarr"\nsampels = 2\n')
    line = _one_line_error(runner.invoke(app, ["jobs", "validate", str(spec)]))
    assert "[run]" in line


# -- 7. one writer per store ------------------------------------------------------------------------
def test_resume_refuses_a_second_live_writer(pipe, complete):
    from denoisefeat.jobs.state import TaskLock, TaskLockedError

    with TaskLock(complete.with_name(".S.zarr.lock")):
        with pytest.raises(TaskLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            trace(pipe, class_labels=[0, 1, 2, 3], steps=3, batch_size=2, store=complete, resume=True,
                  record={"mid_block": "channel_mean"})
        line = _one_line_error(runner.invoke(app, ["extract", "tiny-class-unet", "--label", "0", "--steps", "3",
                                                   "--out", str(complete), "--resume"]))
        assert f"pid {os.getpid()}" in line and "is being written by another live process" in line


# -- 8. API papercuts ---------------------------------------------------------------------------------
def test_layer_infos_work_as_layer_names(pipe):
    from denoisefeat.hooks import Edit, list_layers, resolve_layers

    assert dft.hooks.list_layers is list_layers
    infos = [info for info in list_layers(pipe) if info.name in ("mid_block", "up_blocks.0")]
    assert resolve_layers(pipe, infos) == ["up_blocks.0", "mid_block"] or resolve_layers(pipe, infos) == [
        "mid_block", "up_blocks.0"]
    run = trace(pipe, class_labels=[0], steps=2, record={infos[0]: "channel_mean"})
    assert run.layers() == [infos[0].name]
    assert Edit(infos[0], "zero").layer == infos[0].name
    with pytest.raises(TypeError, match="module path"):
        resolve_layers(pipe, [3])


def test_constant_float_target_is_refused():
    import xarray as xr

    from denoisefeat.probes import fit

    acts = xr.DataArray(np.random.default_rng(0).normal(size=(6, 2, 3)), dims=("sample", "step", "channel"))
    with pytest.raises(ValueError, match="target is constant"):
        fit(acts, target=xr.DataArray(np.full(6, 0.5), dims=("sample",)), cv=2)


# -- 9. batch independence --------------------------------------------------------------------------
def test_final_image_does_not_depend_on_the_batch():
    toy = dft.load_pipeline("toy")
    labels = [3, 40, 77, 100]
    a = trace(toy, class_labels=labels, steps=5, batch_size=2, keep=("x0",))
    b = trace(toy, class_labels=labels, steps=5, batch_size=4, keep=("x0",))
    np.testing.assert_allclose(a["final"].values, b["final"].values, atol=1e-4, rtol=0)


# -- 6. a dead worker -----------------------------------------------------------------------------------
def kill_task_zero(spec, index):
    """A task runner whose task 0 kills its worker process (SIGKILL) unless a marker says not to."""
    from denoisefeat.jobs.tasks import run_task

    if index == 0 and not (spec.jobs_dir / "spare").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return run_task(spec, index)


@pytest.mark.slow
def test_dead_worker_fails_only_its_task_and_a_rerun_completes(tmp_path):
    from denoisefeat.jobs import parse_spec, run_all

    spec = parse_spec({"run": {"model": "tiny-unet", "store": "out.zarr", "samples": 2, "steps": 2, "batch_size": 1}},
                      path=tmp_path / "spec.toml", check_model=False)
    outcome = run_all(spec, workers=2, task_runner=kill_task_zero)
    assert len(outcome.failed) == 1 and "worker process died" in next(iter(outcome.failed.values()))
    assert len(outcome.ran) == 1
    (spec.jobs_dir / "spare").touch()
    again = run_all(spec, workers=1, task_runner=kill_task_zero)  # the rerun (in this process) completes it
    assert not again.failed and len(again.ran) == 1
    assert open_run(tmp_path / "out.zarr").store.completed().all()


def test_in_memory_store_damage_check_is_clean(pipe):
    run = trace(pipe, class_labels=[0, 1], steps=2)
    assert run.store.damage(decode=True) == []
    assert isinstance(run.store, RunStore) and zarr is not None
