import numpy as np
import pytest
import torch

import denoisefeat as dft
from denoisefeat.analyses import rank
from denoisefeat.analyses.ablation import ablation_scan, resolve_features, step_windows
from denoisefeat.hooks.layers import UnknownLayerError

PLANTED = "up_blocks.1.resnets.1.conv2"
NOOP = "mid_block.resnets.1.conv2"


@pytest.fixture(scope="module")
def planted_pipe():
    pipe = dft.load_pipeline("tiny-class-unet")
    modules = dict(pipe.unet.named_modules())
    with torch.no_grad():
        modules[PLANTED].bias[0] += 50.0  # a strong, known contribution flowing to the output
        modules[NOOP].weight.zero_()  # this resnet branch now outputs 0: ablating it is a no-op
        modules[NOOP].bias.zero_()
    return pipe


def test_planted_layer_ranks_first_for_colour(planted_pipe):
    frame = ablation_scan(planted_pipe, layers=[NOOP, PLANTED], windows=1, features=["color", "band_error:low"],
                          samples=4, class_labels=[0, 1, 2, 3], steps=3, n_boot=200)
    assert set(frame["feature"]) == {"delta_e2000", "colorfulness", "band_error:low"}
    assert len(frame) == 2 * 3
    top = rank(frame, feature="delta_e2000", top=2)
    assert top.loc[0, "layer"] == PLANTED and top.loc[0, "significant"]
    assert top.loc[0, "ci_low"] > 1.0  # a large colour change, CI well away from 0
    noop = frame[frame["layer"] == NOOP]
    np.testing.assert_allclose(noop["effect"], 0.0, atol=1e-6)
    assert (noop["ci_low"] <= 1e-6).all() and (noop["ci_high"] >= -1e-6).all()
    planted_band = frame[(frame.layer == PLANTED) & (frame.feature == "band_error:low")]["effect"].item()
    assert planted_band > 0.01


def test_bad_inputs(planted_pipe):
    with pytest.raises(UnknownLayerError, match="Closest"):
        ablation_scan(planted_pipe, layers=["mid_blok"], windows=1, samples=2, steps=2)
    with pytest.raises(ValueError, match="Valid: edges"):
        resolve_features(["colour_ness"])
    with pytest.raises(ValueError, match="empty"):
        step_windows([], 4)
    with pytest.raises(ValueError, match="Invalid window"):
        step_windows([(3, 3)], 4)
    with pytest.raises(ValueError, match="zero, mean, resample"):
        ablation_scan(planted_pipe, layers=[NOOP], windows=1, method="erase", samples=2, steps=2)
    assert step_windows(3, 7) == [(0, 3), (3, 5), (5, 7)]
    assert resolve_features(["color", "delta_e2000"]) == ["delta_e2000", "colorfulness"]
