"""Probes: planted ground truth, grouped cross-validation, controls, pixel probes, a real run."""

import numpy as np
import pytest
import xarray as xr

from denoisefeat import probes
from denoisefeat.analyses.table import validate


def _planted(n=60, steps=6, channels=8, signal_steps=(2, 3), seed=0):
    """Channel 0 equals the target (plus 5 % noise) at ``signal_steps``; everything else is noise."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    a = rng.normal(size=(n, steps, channels))
    for s in signal_steps:
        a[:, s, 0] = y + 0.05 * rng.normal(size=n)
    return xr.DataArray(a, dims=("sample", "step", "channel"), name="mid_block/channel_mean"), y


def test_ridge_probe_finds_the_planted_steps_only():
    acts, y = _planted(steps=4, signal_steps=(1, 2))
    result = probes.fit(acts, y, cv=3, n_shuffles=24, n_boot=300)
    assert result.attrs["metric"] == "r2" and result.attrs["kind"] == "ridge"
    assert result["score"].dims == ("step",) and result["step"].values.tolist() == list(range(4))
    assert result["step_stop"].values.tolist() == list(range(1, 5))
    signal, null = result.sel(step=[1, 2]), result.sel(step=[0, 3])
    assert (signal["score"] > 0.98).all()
    assert (signal["ci_low"] > 0.97).all() and (signal["ci_high"] <= 1).all()
    # pooled out-of-fold R² of a probe that knows nothing is ≈ 0 (slightly negative: fold means differ)
    assert (np.abs(null["score"]) < 0.3).all()
    assert (np.abs(result["shuffled"]) < 0.3).all()
    # the permutation interval's lower end is score − the largest of the 24 shuffled scores
    assert (signal["selectivity_ci_low"] > 0.85).all()
    # the permutation p of the selectivity (the same 24 refitted shuffles as its CI): every shuffle is
    # beaten at the planted steps, few elsewhere
    np.testing.assert_allclose(signal["p"], 1 / 25)
    # at the null steps the probe is no better than the shuffles (the p-values' calibration over many
    # null cells is tested in test_attribution_statistics.py)
    assert (np.abs(null["selectivity"]) < 0.3).all()
    assert (result["n"] == 60).all()


def test_logistic_probe_separates_classes_and_keeps_their_names():
    rng = np.random.default_rng(1)
    names = np.array(["red", "green", "blue"])
    labels = names[np.arange(45) % 3]
    centres = 5.0 * np.eye(3, 6)
    a = rng.normal(size=(45, 3, 6)) + centres[np.arange(45) % 3][:, None, :]
    a[:, 0] = rng.normal(size=(45, 6))  # step 0 carries no class information
    result = probes.fit(xr.DataArray(a, dims=("sample", "step", "channel")), labels, n_boot=200)
    assert result.attrs["kind"] == "logistic" and result.attrs["metric"] == "accuracy"
    assert sorted(result.attrs["classes"]) == ["blue", "green", "red"]
    assert result.attrs["chance"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(result["score"].sel(step=[1, 2]), 1.0)
    assert result["score"].sel(step=0) < 0.7
    assert (result["shuffled"] < 0.7).all()


def test_cross_validation_never_splits_the_steps_of_a_sample():
    """Each sample has a fixed random fingerprint at every step and an unrelated target.

    A probe that can see other steps of a test sample during training memorises the fingerprint;
    grouped by sample, it cannot predict anything.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    n, steps, features = 30, 5, 60
    fingerprint = rng.normal(size=(n, 1, features))
    a = fingerprint + 0.05 * rng.normal(size=(n, steps, features))
    y = rng.normal(size=n)
    acts = xr.DataArray(a, dims=("sample", "step", "feature"))

    result = probes.fit(acts, y, windows=1, n_boot=0)
    assert result.sizes["step"] == 1 and int(result["step_stop"][0]) == steps
    assert float(result["score"][0]) < 0.2

    # the same rows split without regard to samples leak: the test has the power to fail
    X, rows_y = a.reshape(n * steps, features), np.repeat(y, steps)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=probes.DEFAULT_ALPHAS))
    leaked = cross_val_predict(model, X, rows_y, cv=KFold(5, shuffle=True, random_state=0))
    assert r2_score(rows_y, leaked) > 0.8


def test_groups_keep_related_samples_in_one_fold():
    """Pairs of samples are near-duplicates with the same target: only ``groups`` stops the leak."""
    rng = np.random.default_rng(3)
    pairs, features = 20, 60
    base = rng.normal(size=(pairs, features))
    a = np.repeat(base, 2, axis=0) + 0.01 * rng.normal(size=(2 * pairs, features))
    y = np.repeat(rng.normal(size=pairs), 2)
    acts = xr.DataArray(a[:, None, :], dims=("sample", "step", "feature"))
    leaky = probes.fit(acts, y, n_boot=0)
    grouped = probes.fit(acts, y, groups=np.repeat(np.arange(pairs), 2), n_boot=0)
    assert float(leaky["score"][0]) > 0.4
    assert float(grouped["score"][0]) < 0.1


def test_feature_control_measures_selectivity_and_its_p_value():
    acts, y = _planted(n=50, steps=3, signal_steps=(1, 2), seed=4)
    rng = np.random.default_rng(5)
    # a control that holds exactly the probe's features at step 2 (like x_t late in sampling)
    c = rng.normal(size=(50, 3, 8))
    c[:, 2] = acts.values[:, 2]
    control = xr.DataArray(c, dims=("sample", "step", "pixel"), name="xt")
    result = probes.fit(acts, y, control=control, n_boot=300)
    assert result.attrs["control"] == "xt"
    np.testing.assert_allclose(result["selectivity"], result["score"] - result["control"])
    assert result["selectivity"].sel(step=1) > 0.9 and result["selectivity_ci_low"].sel(step=1) > 0.8
    assert result["p"].sel(step=1) == pytest.approx(1 / 301)  # every bootstrap resample beats the control
    # identical features: identical held-out predictions, so no selectivity at all
    assert float(result["selectivity"].sel(step=2)) == 0.0
    assert float(result["p"].sel(step=2)) == 1.0
    assert float(result["selectivity_ci_low"].sel(step=2)) == 0.0 == float(result["selectivity_ci_high"].sel(step=2))
    assert result["p"].sel(step=0) > 0.01  # neither knows anything at step 0


def test_windows_per_step_targets_branches_and_unrecorded_steps():
    rng = np.random.default_rng(6)
    n, steps = 40, 4
    target = rng.normal(size=(n, steps))  # a different target at every step
    a = rng.normal(size=(n, 2, steps, 5))
    a[:, 1, :, 0] = target  # only the "cond" branch encodes it
    a[:, :, 3] = np.nan  # step 3 was not recorded
    acts = xr.DataArray(a, dims=("sample", "branch", "step", "channel"), coords={"branch": ["uncond", "cond"]})
    result = probes.fit(acts, xr.DataArray(target, dims=("sample", "step")), windows=2, alphas=(0.1, 10.0), n_boot=0)
    assert result["score"].dims == ("branch", "step")
    assert result["step"].values.tolist() == [0, 2] and result["step_stop"].values.tolist() == [2, 4]
    assert (result["score"].sel(branch="cond") > 0.95).all()
    assert (result["score"].sel(branch="uncond") < 0.3).all()
    np.testing.assert_array_equal(result["n"], 40)  # window [2, 4) is scored on its recorded step 2
    only_unrecorded = probes.fit(acts.isel(step=[3]), target[:, 3], n_boot=0)
    assert np.isnan(only_unrecorded["score"]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lasso"}, "kind must be one of"),
        ({"target": np.zeros(7)}, "one value per sample"),
        ({"target": np.zeros(12, dtype=int)}, "at least 2 classes"),
        ({"n_shuffles": 0}, "n_shuffles ≥ 1"),
        ({"cv": 20}, "cv=20 folds need at least 20 samples"),
        ({"groups": np.zeros(3)}, "one label per sample"),
        ({"acts": np.zeros((12, 2, 3))}, "xarray.DataArray"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, message):
    acts = xr.DataArray(np.random.default_rng(0).normal(size=(12, 2, 3)), dims=("sample", "step", "channel"))
    args = {"acts": acts, "target": np.arange(12, dtype=float), "n_boot": 0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        probes.fit(args.pop("acts"), args.pop("target"), **args)


def _discs(n, size, rng):
    from skimage.draw import disk

    maps = np.zeros((n, size, size), bool)
    for i in range(n):
        centre = rng.uniform(size * 0.3, size * 0.7, size=2)
        rr, cc = disk(tuple(centre), rng.uniform(size * 0.2, size * 0.3), shape=(size, size))
        maps[i, rr, cc] = True
    return maps


def test_pixel_probe_recovers_a_planted_mask_from_coarser_maps():
    rng = np.random.default_rng(7)
    n, size = 24, 16
    maps = _discs(n, size, rng)
    coarse = maps.reshape(n, size // 2, 2, size // 2, 2).mean(axis=(2, 4))  # the mask at half resolution
    a = 0.3 * rng.normal(size=(n, 2, 4, size // 2, size // 2))
    a[:, 1, 2] = coarse + 0.05 * rng.normal(size=coarse.shape)  # step 1, channel 2 encodes it
    acts = xr.DataArray(a, dims=("sample", "step", "channel", "y", "x"))
    result = probes.fit_pixelwise(acts, maps, n_boot=200)
    assert result["iou"].dims == ("step",)
    assert float(result["iou"].sel(step=1)) > 0.9 and float(result["f1"].sel(step=1)) > 0.94
    assert result["iou_ci_low"].sel(step=1) > 0.85
    assert float(result["iou"].sel(step=0)) < 0.5
    assert float(result["shuffled_iou"].sel(step=1)) < 0.6
    assert result.attrs["positive_rate"] == pytest.approx(maps.mean())
    with pytest.raises(ValueError, match="binary"):
        probes.fit_pixelwise(acts, maps * 0.5)
    with pytest.raises(ValueError, match="spatial activations"):
        probes.fit_pixelwise(acts.isel(x=0), maps)


def test_probe_table_on_a_real_run(tiny_pipes):
    from denoisefeat.trajectory import trace

    pipe = tiny_pipes["tiny-class-unet"]
    labels = np.array([0, 1, 2, 3] * 4)
    run = trace(pipe, class_labels=labels.tolist(), steps=3, seed=0,
                record={"mid_block": "channel_mean", "down_blocks.0": "channel_mean"})
    acts = run.acts("mid_block")
    assert acts.dims == ("sample", "step", "channel")
    colour = labels % 2  # stand-in for the toy model's colour factor (the tiny model has 4 classes)
    result = probes.fit(acts, colour, cv=4, n_boot=100)
    assert result["score"].shape == (3,) and result["step"].values.tolist() == [0, 1, 2]
    assert "timestep" in result.coords
    np.testing.assert_array_equal(result["timestep"], run["timestep"].values)

    table = probes.probe_table(run, targets={"colour": colour}, cv=4, n_boot=100)
    validate(table)
    assert len(table) == 2 * 3
    assert set(table["layer"]) == {"mid_block", "down_blocks.0"}
    assert set(table["method"]) == {"probe"} and set(table["feature"]) == {"colour"}
    assert sorted(set(zip(table["step_start"], table["step_stop"]))) == [(0, 1), (1, 2), (2, 3)]
    np.testing.assert_allclose(table["effect"], table["score"] - table["baseline"])
    assert (table["n"] == 16).all() and table["p"].between(0, 1).all() and table["p_adj"].notna().all()

    xt = probes.xt_features(run, size=4)
    assert xt.dims == ("sample", "step", "feature") and xt.shape == (16, 3, 3 * 4 * 4)
    twin = probes.random_init_acts(pipe, run, layers="mid_block", seed=1)
    assert twin["mid_block"].shape == acts.shape
    assert not np.allclose(twin["mid_block"].values, acts.values)
    with pytest.raises(ValueError, match="control must be"):
        probes.probe_table(run, targets={"colour": colour}, control="noise")
    with pytest.raises(KeyError, match="Recorded: mid_block, down_blocks.0"):
        probes.probe_table(run, targets={"colour": colour}, layers="up_blocks.0")


def test_the_toy_model_is_recognised_from_what_the_store_says_never_from_a_class_count(tiny_pipes):
    from denoisefeat.toy.diffshapes import NUM_CONDITIONS
    from denoisefeat.trajectory import trace

    run = trace(tiny_pipes["tiny-class-unet"], class_labels=[0, 1, 2], steps=2, keep=("images",))
    assert "label_set" not in run.attrs
    assert list(probes.label_targets(run)) == ["class_label"]
    toy_count = {"denoiser_config": {"num_class_embeds": NUM_CONDITIONS + 1}, "model_id": "my/model"}
    assert not probes.is_diffshapes_run(toy_count)  # 121 classes alone say nothing
    assert probes.is_diffshapes_run({"label_set": "diffshapes", "model_id": "my/model"})
    assert not probes.is_diffshapes_run({"label_set": "imagenet", "model_id": "toy"})  # what it declares wins
    # stores written before runs recorded label_set: the built-in toy model by its model_id
    assert probes.is_diffshapes_run({"model_id": "toy"})
    assert probes.is_diffshapes_run({"model_id": "/venv/lib/python3.12/site-packages/denoisefeat/toy/weights"})
    assert not probes.is_diffshapes_run({"model_id": "google/ddpm-cifar10-32"})


def test_toy_model_colour_is_decodable_late_in_sampling():
    from denoisefeat.models import TOY_WEIGHTS, load_pipeline
    from denoisefeat.toy.diffshapes import COLORS, condition_label
    from denoisefeat.trajectory import trace

    if not (TOY_WEIGHTS / "model_index.json").exists():
        pytest.skip("the trained toy model is not shipped yet")
    colours = [COLORS[i % 2] for i in range(20)]
    labels = [condition_label("circle", c, "solid") for c in colours]
    run = trace(load_pipeline("toy"), class_labels=labels, steps=6, seed=0, guidance_scale=1.0,
                record={"mid_block": "channel_mean"})
    assert run.attrs["label_set"] == "diffshapes"  # the toy pipeline says what its labels are; trace records it
    targets = probes.label_targets(run)
    assert sorted(targets) == ["color", "shape", "texture"]
    assert targets["color"].values.tolist() == colours and set(targets["shape"].values) == {"circle"}
    result = probes.fit(run.acts("mid_block"), np.array(colours), cv=4, n_boot=0, control=probes.xt_features(run))
    assert float(result["score"].isel(step=-1)) > 0.9


def test_one_fixed_penalty_skips_the_inner_search():
    """A single alpha fits one ridge / logistic model per fold (no inner CV) and still finds the signal."""
    rng = np.random.default_rng(11)
    n = 40
    a = rng.normal(size=(n, 1, 6))
    y = a[:, 0, 2] * 3 + rng.normal(scale=0.1, size=n)
    acts = xr.DataArray(a, dims=("sample", "step", "channel"))
    for alphas in ((10.0,), 10.0):
        result = probes.fit(acts, y, alphas=alphas, n_boot=0)
        assert float(result["score"].squeeze()) > 0.9
    labels = np.where(a[:, 0, 4] > 0, "warm", "cold")
    result = probes.fit(acts, labels, alphas=(1.0,), n_boot=0)
    assert float(result["score"].squeeze()) > 0.85
