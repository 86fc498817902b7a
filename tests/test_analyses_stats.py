"""Correlation and regression attribution: references (scipy, statsmodels), planted effects, coverage."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from denoisefeat.analyses.correlation import activity, correlate, feature_change
from denoisefeat.analyses.regression import regress
from denoisefeat.analyses.table import COLUMNS, validate


def _da(values, name=None):
    return xr.DataArray(values, dims=("sample", "step"), name=name)


def _planted(*, n=40, steps=10, layers=6, effect_layer="layer1", effect_steps=(4, 5), beta=0.8, seed=0):
    """Independent standard-normal activities; Δfeature = beta·activity of one layer at some steps + noise."""
    rng = np.random.default_rng(seed)
    acts = {f"layer{k}": _da(rng.normal(size=(n, steps))) for k in range(layers)}
    dy = rng.normal(size=(n, steps))
    effect_steps = [s for s in effect_steps if s < steps]
    dy[:, effect_steps] += beta * acts[effect_layer].values[:, effect_steps]
    return acts, _da(dy, "edges")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def test_feature_change_aligns_each_change_with_the_step_that_made_it():
    steps = np.arange(5)
    f = _da(np.tile(steps.astype(float) ** 2, (3, 1)), "size").assign_coords(step=steps)  # f[s] = s²
    out = feature_change(f)
    assert out["step"].values.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(out["size"].values[0], 2 * np.arange(1, 5) - 1)  # s² − (s−1)²
    inp = feature_change(f, measured_on="input")
    assert inp["step"].values.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(inp["size"].values[0], 2 * np.arange(4) + 1)  # (s+1)² − s²
    with pytest.raises(ValueError, match="consecutive steps"):
        feature_change(f.isel(step=[0, 2, 3]))
    with pytest.raises(ValueError, match="measured_on"):
        feature_change(f, measured_on="x0")


def test_activity_statistics_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 2, 3, 5))
    acts = xr.DataArray(a, dims=("sample", "branch", "step", "channel"), coords={"branch": ["uncond", "cond"]},
                        name="mid_block/channel_mean")
    norm = activity(acts, of="value", branch="cond")
    assert norm.dims == ("sample", "step") and norm.name == "mid_block"
    np.testing.assert_allclose(norm.values, np.linalg.norm(a[:, 1], axis=-1))
    np.testing.assert_allclose(activity(acts, of="value", stat="mean", branch="uncond").values, a[:, 0].mean(-1))
    np.testing.assert_allclose(activity(acts, of="value", stat="rms", branch="cond").values,
                               np.sqrt((a[:, 1] ** 2).mean(-1)))
    # the default: the change brought by each step's call, labelled with that step (step 0 has none)
    change = activity(acts.assign_coords(step=[4, 5, 6]), branch="cond")
    assert change["step"].values.tolist() == [5, 6] and change.name == "mid_block"
    np.testing.assert_allclose(change.values, np.linalg.norm(np.diff(a[:, 1], axis=1), axis=-1))
    with pytest.raises(ValueError, match="pass branch="):
        activity(acts)
    with pytest.raises(ValueError, match="stat must be"):
        activity(acts, stat="max", branch="cond")
    with pytest.raises(ValueError, match="of must be"):
        activity(acts, of="delta", branch="cond")
    with pytest.raises(ValueError, match="consecutive recorded steps"):
        activity(acts.assign_coords(step=[0, 2, 3]), branch="cond")


# ---------------------------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "reference"), [("pearson", stats.pearsonr), ("spearman", stats.spearmanr)])
def test_correlation_equals_scipy_and_bh_equals_statsmodels(method, reference):
    from statsmodels.stats.multitest import multipletests

    acts, dy = _planted(n=25, steps=4, layers=3)
    table = correlate(acts, dy, method=method)
    validate(table)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 3 * 4 and set(table["method"]) == {method}
    assert (table["step_stop"] == table["step_start"] + 1).all()
    for row in table.itertuples():
        x, y = acts[row.layer].values[:, row.step_start], dy.values[:, row.step_start]
        expected = reference(x, y)
        assert row.effect == pytest.approx(expected.statistic, abs=1e-12)
        # CI and p come from one procedure (Fisher z): the 95 % CI excludes 0 exactly when p < 0.05
        se = (1.0 if method == "pearson" else 1.06) ** 0.5 / np.sqrt(25 - 3)
        assert row.p == pytest.approx(2 * stats.norm.sf(abs(np.arctanh(expected.statistic)) / se), rel=1e-9)
        assert (row.p < 0.05) == (row.ci_low > 0 or row.ci_high < 0)
        assert row.ci_low <= row.effect <= row.ci_high and row.n == 25
        # standardised: the slope on z(activity), r · SD_s(Δf), in SDs of Δf over the whole run
        assert row.effect_std == pytest.approx(row.effect * y.std() / dy.values.std(), rel=1e-9)
    np.testing.assert_allclose(table["p_adj"], multipletests(table["p"], method="fdr_bh")[1])


def test_correlation_finds_the_planted_layer_and_steps_after_bh():
    acts, dy = _planted()
    table = correlate(acts, dy)
    significant = table[table["p_adj"] < 0.05]
    assert set(zip(significant["layer"], significant["step_start"])) == {("layer1", 4), ("layer1", 5)}
    null = table[~((table["layer"] == "layer1") & table["step_start"].isin([4, 5]))]
    assert (null["p"] < 0.05).mean() < 0.1  # nominal false-positive rate before correction


def test_correlation_ci_covers_the_true_correlation():
    """150 independent cells with ρ = 0.5: about 95 % of the 95 % CIs contain ρ."""
    rng = np.random.default_rng(1)
    n, cells, rho = 40, 150, 0.5
    x = rng.normal(size=(n, cells))
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(n, cells))
    table = correlate({"layer": _da(x)}, _da(y, "f"))
    covered = ((table["ci_low"] <= rho) & (rho <= table["ci_high"])).mean()
    assert 0.85 <= covered <= 0.995
    assert table["effect"].mean() == pytest.approx(rho, abs=0.05)


def test_correlation_aligns_inputs_and_marks_undefined_cells():
    acts, dy = _planted(n=12, steps=5, layers=2)
    change = feature_change(_da(np.cumsum(dy.values, axis=1), "edges"))  # steps 1…4
    acts["layer0"][:, 2] = 1.0  # constant activity at step 2
    table = correlate(acts, change)
    assert sorted(set(table["step_start"])) == [1, 2, 3, 4]
    undefined = table[(table["layer"] == "layer0") & (table["step_start"] == 2)].iloc[0]
    assert np.isnan(undefined["effect"]) and np.isnan(undefined["p"]) and np.isnan(undefined["p_adj"])
    assert np.isnan(undefined["ci_low"]) and table["ci_low"].notna().sum() == len(table) - 1
    with pytest.raises(ValueError, match="method must be one of"):
        correlate(acts, change, method="kendall")
    with pytest.raises(ValueError, match="must have dims"):
        correlate({"layer0": xr.DataArray(np.zeros(12), dims=("sample",))}, change)


# ---------------------------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------------------------
def _long(acts, dy, layer, start, stop):
    steps = dy["step"].values
    inside = (steps >= start) & (steps < stop)
    n = dy.sizes["sample"]
    frame = pd.DataFrame({
        "dy": dy.values[:, inside].ravel(),
        "x": acts[layer].values[:, inside].ravel(),
        "sample": np.repeat(np.arange(n), inside.sum()),
        "step": np.tile(steps[inside], n),
    })
    frame["z"] = (frame["x"] - frame["x"].mean()) / frame["x"].std(ddof=0)
    return frame


def test_ols_matches_a_direct_statsmodels_fit_with_cluster_robust_errors():
    import statsmodels.formula.api as smf

    acts, dy = _planted(n=30, steps=6, layers=2, effect_steps=(3, 4, 5))
    table = regress(acts, dy, windows=[(0, 3), (3, 6)])
    validate(table)
    assert {"n_obs"} <= set(table.columns) and set(table["method"]) == {"ols"}
    for row in table.itertuples():
        frame = _long(acts, dy, row.layer, row.step_start, row.step_stop)
        direct = smf.ols("dy ~ z + C(step)", data=frame).fit(cov_type="cluster", cov_kwds={"groups": frame["sample"]})
        assert row.effect == pytest.approx(direct.params["z"], rel=1e-9)
        low, high = direct.conf_int().loc["z"]
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), rel=1e-9)
        assert row.p == pytest.approx(direct.pvalues["z"], rel=1e-6)
        assert row.n == 30 and row.n_obs == 90


def test_regression_finds_the_planted_layer_and_window_after_bh():
    from statsmodels.stats.multitest import multipletests

    acts, dy = _planted(n=40, steps=10, layers=20, effect_steps=(4, 5), beta=0.6, seed=3)
    table = regress(acts, dy, windows=5)
    assert sorted(set(zip(table["step_start"], table["step_stop"]))) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    np.testing.assert_allclose(table["p_adj"], multipletests(table["p"], method="fdr_bh")[1])
    significant = table[table["p_adj"] < 0.05]
    assert set(zip(significant["layer"], significant["step_start"])) == {("layer1", 4)}
    planted = significant.iloc[0]
    assert planted["ci_low"] < 0.6 < planted["ci_high"]  # activities are standard normal: β per SD is 0.6
    null = table[~((table["layer"] == "layer1") & (table["step_start"] == 4))]
    assert (null["p"] < 0.05).mean() < 0.1  # 99 null cells at about the nominal rate


def test_cluster_robust_errors_widen_when_the_steps_of_a_sample_are_correlated():
    """Activity and Δfeature both carry a per-sample offset; with no true effect, the naive SEs are
    too small (over-confident), the sample-clustered ones are not."""
    rng = np.random.default_rng(4)
    n, steps = 30, 8
    x = rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, steps))
    y = rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, steps))
    acts, dy = {"layer": _da(x)}, _da(y, "f")
    clustered = regress(acts, dy, windows=1, step_effects=False).iloc[0]
    naive = regress(acts, dy, windows=1, step_effects=False, cov_type="nonrobust").iloc[0]
    assert clustered["effect"] == pytest.approx(naive["effect"])
    width = lambda row: row["ci_high"] - row["ci_low"]  # noqa: E731
    assert width(clustered) > 2 * width(naive)


def test_mixedlm_matches_statsmodels_and_finds_the_effect():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(5)
    n, steps = 30, 4
    x = rng.normal(size=(n, steps))
    dy = rng.normal(size=(n, 1)) + 0.7 * x + 0.5 * rng.normal(size=(n, steps))  # a random intercept per sample
    acts, change = {"layer": _da(x)}, _da(dy, "f")
    row = regress(acts, change, model="mixedlm", windows=1).iloc[0]
    frame = _long(acts, change, "layer", 0, steps)
    direct = smf.mixedlm("dy ~ z + C(step)", data=frame, groups=frame["sample"]).fit(reml=True)
    assert row["method"] == "mixedlm"
    assert row["effect"] == pytest.approx(direct.params["z"], rel=1e-5)
    assert row["p"] < 1e-6 and row["ci_low"] > 0
    with pytest.raises(ValueError, match="mixedlm needs ≥ 2 steps"):
        regress(acts, change, model="mixedlm", windows=steps)


def test_joint_regression_separates_a_cause_from_a_correlated_bystander():
    rng = np.random.default_rng(6)
    n, steps = 60, 4
    cause = rng.normal(size=(n, steps))
    bystander = cause + 0.5 * rng.normal(size=(n, steps))  # correlated with the cause, no effect of its own
    dy = cause + 0.5 * rng.normal(size=(n, steps))
    acts, change = {"cause": _da(cause), "bystander": _da(bystander)}, _da(dy, "f")
    separate = regress(acts, change, windows=1).set_index("layer")
    joint = regress(acts, change, windows=1, joint=True).set_index("layer")
    assert separate.loc["bystander", "p"] < 1e-6  # alone, it looks responsible
    assert joint.loc["cause", "p"] < 1e-6
    assert joint.loc["bystander", "p"] > 0.01 and abs(joint.loc["bystander", "effect"]) < 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "glm"}, "model must be one of"),
        ({"cov_type": "HC3"}, "cov_type must be one of"),
        ({"windows": 0}, "windows must be between"),
        ({"windows": [(0, 20)]}, "outside the steps"),
    ],
)
def test_regression_refuses_bad_options(kwargs, message):
    acts, dy = _planted(n=10, steps=4, layers=2)
    with pytest.raises(ValueError, match=message):
        regress(acts, dy, **kwargs)
