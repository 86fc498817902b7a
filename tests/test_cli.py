"""The command line: extract and info, and one-line errors with exit status 2."""

import numpy as np
from typer.testing import CliRunner

from denoisefeat.cli import app
from denoisefeat.store import open_run

runner = CliRunner()


def test_extract_then_info(tmp_path):
    out = tmp_path / "run.zarr"
    result = runner.invoke(app, ["extract", "tiny-class-unet", "--samples", "3", "--steps", "4", "--seed", "2",
                                 "--label", "1", "--batch-size", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = open_run(out)
    assert list(run.dataset["seed"].values) == [2, 3, 4]
    assert np.isfinite(run.dataset["x0"].values).all()
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0
    assert "ClassConditionalImagePipeline" in result.output
    assert "3 (3 complete)" in result.output


def _error(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:")
    return result.output


def test_bad_inputs_give_one_line_errors(tmp_path):
    assert "Did you mean" in _error(["extract", "tiny-unett", "--samples", "2", "--out", str(tmp_path / "a.zarr")])
    assert "does not exist" in _error(["extract", "./missing", "--samples", "2", "--out", str(tmp_path / "b.zarr")])
    assert "steps must be" in _error(["extract", "tiny-unet", "--samples", "2", "--steps", "0",
                                      "--out", str(tmp_path / "c.zarr")])
    assert "not a denoisefeat store" in _error(["info", str(tmp_path)])
    out = tmp_path / "d.zarr"
    extract = ["extract", "tiny-unet", "--samples", "1", "--steps", "2", "--out", str(out)]
    assert runner.invoke(app, extract).exit_code == 0
    assert "--resume" in _error(["extract", "tiny-unet", "--samples", "1", "--steps", "2", "--out", str(out)])


def test_prompts_and_seeds_mismatch(tmp_path):
    assert "samples=3 but 2 conditions" in _error(
        ["extract", "tiny-sd", "--samples", "3", "--prompt", "a", "--prompt", "b", "--out", str(tmp_path / "e.zarr")]
    )


def test_extract_records_layers(tmp_path):
    out = tmp_path / "acts.zarr"
    result = runner.invoke(app, ["extract", "tiny-unet", "--samples", "2", "--steps", "3", "--out", str(out),
                                 "--record", "mid_block=channel_mean,spatial_energy", "--record", "conv_in=full"])
    assert result.exit_code == 0, result.output
    run = open_run(out)
    assert run.layers() == ["mid_block", "conv_in"]
    assert run.acts("mid_block", "channel_mean").dims == ("sample", "step", "channel")
    assert run.acts("conv_in").shape == (2, 3, 8, 16, 16)
    assert "acts" in runner.invoke(app, ["info", str(out)]).output


def test_bad_record_options(tmp_path):
    assert "LAYER=REDUCER" in _error(["extract", "tiny-unet", "--samples", "1", "--steps", "2", "--record", "mid_block",
                                      "--out", str(tmp_path / "f.zarr")])
    assert "Closest: mid_block" in _error(["extract", "tiny-unet", "--samples", "1", "--steps", "2",
                                           "--record", "mid_blok=full", "--out", str(tmp_path / "g.zarr")])
    assert "Unknown reducer" in _error(["extract", "tiny-unet", "--samples", "1", "--steps", "2",
                                        "--record", "mid_block=mean", "--out", str(tmp_path / "h.zarr")])
