"""`denoisefeat attribute scan|trace|stats` and `denoisefeat probe`: real runs, stored tables, clear errors."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from denoisefeat.analyses import FEATURE_GROUPS
from denoisefeat.analyses.attribution_patching import DISRUPTION_PROBES
from denoisefeat.analyses.table import rank, read_attribution, read_cell_images
from denoisefeat.cli import app
from denoisefeat.store import open_run

runner = CliRunner()
SMALL = ["--samples", "4", "--steps", "4", "--seed", "3"]


def _ok(args):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _error(args):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def _top_rows(output, feature):
    return [line for line in output.splitlines() if line.strip().startswith(f"│ {feature} ")]


def test_scan_stores_the_table_it_prints(tmp_path):
    out = tmp_path / "scan.zarr"
    output = _ok(["attribute", "scan", "tiny-class-unet", "--out", str(out), "--layer", "mid_block",
                  "--layer", "up_blocks.*", "--windows", "0:2,2:4", "--features", "edges,color", "--top", "2",
                  "--keep-images", "1", *SMALL])
    table = read_attribution(out, name="ablation")
    kept = read_cell_images(out, "ablation")  # --keep-images: the first sample's clean and ablated final images
    assert kept.n_samples == 1 and len(kept.cells) == len(table[["layer", "step_start", "step_stop"]].drop_duplicates())
    np.testing.assert_allclose(kept.clean[0], np.clip(open_run(out)["final"].values[0], 0, 1))
    assert set(table["feature"]) == {*FEATURE_GROUPS["edges"], *FEATURE_GROUPS["color"]}
    assert set(zip(table["step_start"], table["step_stop"])) == {(0, 2), (2, 4)}
    assert {"mid_block", "up_blocks.0", "up_blocks.1"} <= set(table["layer"])
    assert open_run(out).attrs["seeds"][:1] == [3]  # the clean run is in the store
    for feature in (FEATURE_GROUPS["edges"][0], FEATURE_GROUPS["color"][0]):
        rows = _top_rows(output, feature)
        assert len(rows) == 2
        for printed, row in zip(rows, rank(table, feature=feature, top=2).itertuples()):  # the stored ranking
            assert f"{row.effect:+.4g}" in printed and f"{row.layer} " in printed


def test_spec_file_gives_defaults_and_flags_override(tmp_path):
    spec = tmp_path / "scan.toml"
    spec.write_text('[attribute]\nmodel = "tiny-class-unet"\nlayer = ["mid_block"]\nwindows = "2"\n'
                    'features = "shape"\nsamples = 4\nsteps = 4\n')
    out = tmp_path / "spec.zarr"
    _ok(["attribute", "scan", "--spec", str(spec), "--out", str(out), "--windows", "1"])
    table = read_attribution(out, name="ablation")
    assert set(table["layer"]) == {"mid_block"}
    assert set(zip(table["step_start"], table["step_stop"])) == {(0, 4)}  # the flag won over the spec
    assert set(table["feature"]) == set(FEATURE_GROUPS["shape"])

    spec.write_text('[attribute]\nmodel = "tiny-class-unet"\nlayers = ["mid_block"]\n')
    message = _error(["attribute", "scan", "--spec", str(spec), "--out", str(tmp_path / "x.zarr")])
    assert "unknown key 'layers'" in message and "layer" in message


def test_unknown_layer_lists_close_matches(tmp_path):
    message = _error(["attribute", "scan", "tiny-class-unet", "--out", str(tmp_path / "u.zarr"),
                      "--layer", "mid_blok", *SMALL])
    assert "mid_block" in message
    assert not (tmp_path / "u.zarr").exists()


def test_causal_trace_command(tmp_path):
    out = tmp_path / "trace.zarr"
    output = _ok(["attribute", "trace", "tiny-class-unet", "--out", str(out), "--layer", "mid_block",
                  "--windows", "1", "--features", "color", "--label", "3", "--n-boot", "50", "--keep-images", "1",
                  *SMALL])
    table = read_attribution(out, name="causal_tracing")
    assert read_cell_images(out, "causal_tracing").corrupted.shape[0] == 1
    assert set(table["method"]) == {"causal_tracing"}
    assert len(table) == len(FEATURE_GROUPS["color"]) and np.isfinite(table["n"]).all()
    assert "causal tracing" in output


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny class-conditional run with two recorded layers and its per-step features."""
    out = tmp_path_factory.mktemp("rec") / "rec.zarr"
    _ok(["extract", "tiny-class-unet", "--samples", "12", "--steps", "6", "--seed", "1", "--batch-size", "4",
         *[arg for label in range(12) for arg in ("--label", str(label % 4))],
         "--record", "mid_block=channel_mean", "--record", "up_blocks.1=channel_mean", "--out", str(out)])
    _ok(["analyze", str(out), "--metrics", "edge_density,colorfulness,ssim"])
    return out


def test_stats_correlation_and_regression(recorded):
    output = _ok(["attribute", "stats", str(recorded), "--features", "edge_density,ssim"])
    corr = read_attribution(recorded, name="correlation")
    assert set(corr["layer"]) == {"mid_block", "up_blocks.1"}
    assert set(corr["feature"]) == {"edge_density", "ssim"}
    assert corr["p_adj"].between(0, 1).all()
    assert "correlation" in output
    _ok(["attribute", "stats", str(recorded), "--method", "regression", "--windows", "2", "--layers", "mid_block"])
    reg = read_attribution(recorded, name="regression")
    assert set(reg["layer"]) == {"mid_block"} and set(reg["method"]) == {"ols"}
    message = _error(["attribute", "stats", str(recorded), "--features", "edge_densty", "--overwrite"])
    assert "edge_density" in message


def test_probe_command_labels_and_features(recorded):
    output = _ok(["probe", str(recorded), "--metrics", "edge_density,colorfulness", "--cv", "3", "--n-boot", "50"])
    table = read_attribution(recorded, name="probe")
    # tiny-class-unet is not the toy model: its labels are probed as one categorical target
    assert set(table["feature"]) == {"edge_density", "colorfulness", "class_label"}
    assert set(table["layer"]) == {"mid_block", "up_blocks.1"}
    assert isinstance(table, pd.DataFrame) and table["n"].eq(12).all()
    assert "probes" in output
    assert "reference" in _error(["probe", str(recorded), "--metrics", "ssim", "--overwrite"])
    assert "--overwrite" in _error(["probe", str(recorded), "--targets", "labels"])  # refused before any work


def test_extract_and_the_scans_take_every_run_option():
    """One declaration of the run options (RunOptions' fields) reaches `extract`, `attribute scan` and `trace`."""
    from dataclasses import fields

    import click
    import typer

    from denoisefeat.options import RunOptions

    renamed = {"class_labels": "--label", "prompts": "--prompt", "guidance_scale": "--guidance"}
    wanted = {renamed.get(f.name, "--" + f.name.replace("_", "-")) for f in fields(RunOptions)}
    command = typer.main.get_command(app)
    ctx = click.Context(command)
    for path in (["extract"], ["attribute", "scan"], ["attribute", "trace"], ["attribute", "patching"]):
        target = command
        for name in path:
            target = target.get_command(ctx, name)
        flags = {flag for param in target.params for flag in param.opts}
        assert wanted <= flags, (path, wanted - flags)


def test_patching_command_stores_the_estimate_and_verifies_its_top_cells(tmp_path):
    out = tmp_path / "patching.zarr"
    output = _ok(["attribute", "patching", "planted-factorized", "--out", str(out), "--layer", "layout",
                  "--layer", "detail", "--windows", "0:2,2:4", "--features", "edges", "--top", "1", *SMALL])
    table = read_attribution(out, name="attribution_patching")
    assert set(table["method"]) == {"attribution_patching:zero"} and len(table) == 4
    assert table.attrs["disruption_probes"] == DISRUPTION_PROBES  # the CLI's default is the API's
    top = rank(table, feature="boundary_width", top=1).iloc[0]
    assert f"{top.effect:+.4g}" in _top_rows(output, "boundary_width")[0]
    output = _ok(["attribute", "patching", "planted-factorized", "--out", str(out), "--layer", "layout",
                  "--layer", "detail", "--windows", "0:2,2:4", "--features", "edges", "--verify-top", "1",
                  "--overwrite", *SMALL])
    assert "boundary_width: Spearman" in output
    assert set(read_attribution(out, name="attribution_study")["method"]) == {"attribution_patching:zero",
                                                                              "ablation:zero"}
    _ok(["attribute", "patching", "planted-factorized", "--out", str(out), "--layer", "layout", "--windows", "0:2",
         "--features", "edges", "--estimator", "exact_step", "--overwrite", *SMALL])
    assert set(read_attribution(out, name="attribution_patching")["estimator"]) == {"exact_step"}
    assert "Unknown estimator" in _error(["attribute", "patching", "planted", "--out", str(tmp_path / "z.zarr"),
                                          "--layer", "layout", "--estimator", "second", *SMALL])
    assert "has no smooth surrogate" in _error(["attribute", "patching", "planted", "--out", str(tmp_path / "x.zarr"),
                                                "--layer", "layout", "--features", "edge_density", *SMALL])
    assert "keeps past model outputs" in _error(["attribute", "patching", "planted", "--out", str(tmp_path / "y.zarr"),
                                                 "--layer", "layout", "--scheduler", "dpm++", *SMALL])
