"""`denoisefeat toy train` and `denoisefeat toy evaluate` end to end (a two-iteration run)."""

import json

from typer.testing import CliRunner

from denoisefeat.cli import app
from denoisefeat.models import ClassConditionalImagePipeline, load_pipeline


def test_train_export_evaluate(tmp_path):
    runner = CliRunner()
    out, weights = tmp_path / "run", tmp_path / "weights"
    result = runner.invoke(app, ["toy", "train", "--out", str(out), "--iterations", "2", "--threads", "1",
                                 "--export", str(weights)])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "iteration-0000002").is_dir()
    assert isinstance(load_pipeline(weights), ClassConditionalImagePipeline)
    # Running again resumes: nothing left to do, same checkpoint.
    again = runner.invoke(app, ["toy", "train", "--out", str(out), "--iterations", "2", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "latest.json").read_text())["iteration"] == 2

    grid, scores = tmp_path / "grid.png", tmp_path / "scores.json"
    result = runner.invoke(app, ["toy", "evaluate", "--model", str(weights), "--samples-per-condition", "1",
                                 "--steps", "2", "--grid", str(grid), "--json", str(scores), "--strict"])
    # A two-iteration model makes noise: the gate must fail, and say so with status 1.
    assert result.exit_code == 1, result.output
    record = json.loads(scores.read_text())
    assert record["samples"] == 120 and 0.0 <= record["shape"] <= 1.0 and record["shape"] < 0.9
    texture = record["confusion"]["texture"]
    assert len(texture) == 4 and sum(map(sum, texture)) == 120
    assert sum(texture[i][i] for i in range(4)) / 120 == record["texture"]
    assert [sum(row) for row in texture] == [30, 30, 30, 30]  # each texture is 30 of the 120 conditions
    assert "conditioned" in result.output and "classified" in result.output  # the confusion table
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(grid).size == (2 * (24 * 33 + 1), 2 * (5 * 33 + 1))


def test_evaluate_reports_a_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(app, ["toy", "evaluate", "--checkpoint", str(tmp_path)])
    assert result.exit_code == 2 and "no training checkpoint" in result.output


def test_corrupt_weights_give_a_clear_error(tmp_path):
    import pytest

    from denoisefeat.models import ModelSourceError
    from denoisefeat.toy.train import TrainConfig, export, train

    config = TrainConfig(size=16, batch_size=2, iterations=1, warmup=1, block_out_channels=(8, 16), threads=1)
    train(config, tmp_path / "run", progress=False)
    weights = export(tmp_path / "run", tmp_path / "weights")
    assert isinstance(load_pipeline(weights), ClassConditionalImagePipeline)
    tensors = weights / "unet" / "diffusion_pytorch_model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])  # truncated download
    with pytest.raises(ModelSourceError, match="corrupt"):
        load_pipeline(weights)
    tensors.unlink()
    (weights / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle would run code")
    with pytest.raises(ModelSourceError):
        load_pipeline(weights)


def test_train_takes_a_named_recipe(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["toy", "train", "--out", str(tmp_path / "run"), "--recipe", "v3", "--iterations", "1",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    from denoisefeat.toy.train import TrainConfig, recipe

    stored = TrainConfig.from_json(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert stored == recipe("v3", iterations=1, threads=1)
    wrong = runner.invoke(app, ["toy", "train", "--out", str(tmp_path / "other"), "--recipe", "v9"])
    assert wrong.exit_code == 2 and "unknown toy recipe 'v9'" in wrong.output
    assert not (tmp_path / "other").exists()
