"""The statistics of attribution tables: one procedure per row, the float floor, rank()'s directions."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import denoisefeat as dft
from denoisefeat.analyses import inference, table
from denoisefeat.analyses.ablation import _ablation_rows, _Reference
from denoisefeat.analyses.scan import as_images as _as_images
from denoisefeat.hooks import Edit
from denoisefeat.metrics import FEATURE_GROUPS
from denoisefeat.store import RunStore

ALPHA = 0.05


# ---------------------------------------------------------------------------------------------
# One procedure per row: references and duality
# ---------------------------------------------------------------------------------------------
def test_t_inference_equals_scipy():
    x = np.random.default_rng(0).normal(0.3, 1.0, size=12)
    result = inference.t_inference(x, alpha=ALPHA)
    reference = stats.ttest_1samp(x, 0.0)
    interval = reference.confidence_interval(confidence_level=1 - ALPHA)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert inference.t_inference(np.zeros(5)) == inference.Inference(0.0, 0.0, 0.0, 1.0)
    assert inference.t_inference(np.full(4, 0.5)).p == 0.0  # a deterministic change
    assert np.isnan(inference.t_inference(np.ones(1)).p)


def test_fisher_z_equals_scipy_pearson_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = 0.4 * x + rng.normal(size=30)
    reference = stats.pearsonr(x, y)
    result = inference.fisher_z_inference(float(reference.statistic), 30, alpha=ALPHA)
    interval = reference.confidence_interval(confidence_level=1 - ALPHA)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-10)
    z = np.arctanh(reference.statistic) * np.sqrt(27)
    assert result.p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)


def test_bootstrap_p_is_its_own_interval():
    rng = np.random.default_rng(2)
    restored, gap = rng.normal(0.5, 1, 20), rng.normal(1, 0.2, 20)
    result = inference.bootstrap_inference(inference.ratio_of_means, restored, gap, n_boot=999, alpha=ALPHA, seed=3)
    assert result.estimate == pytest.approx(restored.mean() / gap.mean())
    assert result.ci_low <= result.estimate <= result.ci_high
    assert (result.p < ALPHA) == (result.ci_low > 0 or result.ci_high < 0)
    with pytest.raises(ValueError, match="at least 20"):
        inference.bootstrap_inference(inference.ratio_of_means, restored, gap, n_boot=19, alpha=ALPHA)
    with pytest.raises(ValueError, match="one entry per sample"):
        inference.bootstrap_inference(inference.ratio_of_means, restored, gap[:3], n_boot=99)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["t", "fisher", "bootstrap", "order"]),
    n=st.integers(2, 30),
    shift=st.floats(-2, 2),
    alpha=st.sampled_from([0.01, 0.05, 0.1, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_every_procedure_is_dual(kind, n, shift, alpha, seed):
    """For every procedure: the 1 − alpha interval excludes 0 exactly when p < alpha."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=n)
    if kind == "t":
        result = inference.t_inference(x, alpha=alpha)
    elif kind == "fisher":
        y = shift * x + rng.normal(size=n)
        r = float(np.corrcoef(x, y)[0, 1]) if n >= 4 else np.nan
        result = inference.fisher_z_inference(r, n, alpha=alpha)
    elif kind == "bootstrap":
        result = inference.bootstrap_inference(lambda a, axis=-1: a.mean(axis=axis), x, n_boot=199, alpha=alpha,
                                               seed=seed)
    else:
        result = inference.order_statistic_inference(float(x.mean()), x, alpha=alpha) if n >= 1 / alpha else None
    if result is None or np.isnan(result.p):
        return
    assert (result.p < alpha) == (result.ci_low > 0 or result.ci_high < 0)
    assert result.ci_low <= result.ci_high


def test_t_inference_is_calibrated_under_the_null():
    """400 null cells of 8 samples: about alpha of them reject."""
    rng = np.random.default_rng(4)
    p = np.array([inference.t_inference(rng.normal(size=8)).p for _ in range(400)])
    assert 0.02 <= (p < ALPHA).mean() <= 0.09


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n_rows=st.integers(1, 40), alpha=st.sampled_from([0.05, 0.1]))
def test_significant_rows_have_intervals_that_exclude_zero(seed, n_rows, alpha):
    """A random table through benjamini_hochberg: p_adj < alpha implies the CI excludes 0."""
    rng = np.random.default_rng(seed)
    rows = [inference.t_inference(rng.normal(rng.choice([0.0, 1.5]), 1.0, size=10), alpha=alpha)
            for _ in range(n_rows)]
    frame = _frame([r.estimate for r in rows], [r.p for r in rows], lows=[r.ci_low for r in rows],
                   highs=[r.ci_high for r in rows])
    significant = frame["p_adj"] < alpha
    excludes = (frame["ci_low"] > 0) | (frame["ci_high"] < 0)
    assert (excludes[significant]).all()
    ranked = table.rank(frame, feature="f", alpha=alpha, top=n_rows)
    assert ranked["significant"].tolist() == sorted(ranked["significant"], reverse=True)


# ---------------------------------------------------------------------------------------------
# rank()
# ---------------------------------------------------------------------------------------------
def _frame(effects, p, *, method="ablation:zero", lows=None, highs=None, specificity=None):
    effects = np.asarray(effects, dtype=float)
    n = len(effects)
    frame = pd.DataFrame({
        "feature": ["f"] * n, "layer": [f"layer{i}" for i in range(n)], "step_start": np.zeros(n, dtype=int),
        "step_stop": np.ones(n, dtype=int), "method": [method] * n, "effect": effects,
        "ci_low": effects - 1 if lows is None else lows, "ci_high": effects + 1 if highs is None else highs,
        "p": np.asarray(p, dtype=float), "p_adj": np.nan, "n": np.full(n, 8), "effect_std": effects / 2,
        "disruption": np.ones(n), "specificity": np.abs(effects) if specificity is None else specificity,
    })
    frame["p_adj"] = table.benjamini_hochberg(frame["p"])
    return frame


@settings(max_examples=100, deadline=None)
@given(data=st.data(), method=st.sampled_from(["ablation:mean", "causal_tracing", "probe", "pearson", "ols"]),
       by=st.sampled_from(["effect", "specificity"]))
def test_rank_never_puts_a_worse_row_above_a_significant_right_signed_one(data, method, by):
    n = data.draw(st.integers(1, 25))
    effects = data.draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n))
    p = data.draw(st.lists(st.sampled_from([1e-6, 1e-3, 0.04, 0.2, 0.9, 1.0, np.nan]), min_size=n, max_size=n))
    frame = _frame(effects, p, method=method, specificity=np.asarray(effects) * 0.7)
    if by == "specificity" and method in ("probe", "pearson", "ols"):
        frame["specificity"] = np.nan
        with pytest.raises(ValueError, match="no specificity"):
            table.rank(frame, feature="f", by=by)
        return
    ranked = table.rank(frame, feature="f", by=by, top=n)
    larger = table.DIRECTIONS[table.method_family(method)] == "larger"
    good = ranked["significant"] & ((ranked["effect_std"] > 0) if larger else True)
    first_bad = int(np.argmin(good.to_numpy())) if not good.all() else n
    assert good.iloc[:first_bad].all() and not good.iloc[first_bad:].any()  # good rows first, then the rest
    column = table.RANK_BY[by]
    for tier in (ranked.iloc[:first_bad], ranked.iloc[first_bad:]):
        score = tier[column] if larger else tier[column].abs()
        assert score.is_monotonic_decreasing


def test_rank_directions_on_a_probe_table():
    """The reviewer's case: a selectivity of −0.92 (p_adj 1) must not rank above +0.65."""
    frame = _frame([-0.92, 0.65, 0.1], [1.0, 1e-4, 0.5], method="probe")
    ranked = table.rank(frame, feature="f")
    assert ranked["layer"].tolist() == ["layer1", "layer2", "layer0"]


def test_rank_errors():
    frame = _frame([1.0, 2.0], [0.01, 0.02])
    with pytest.raises(ValueError, match="Unknown ranking criterion 'size'"):
        table.rank(frame, feature="f", by="size")
    with pytest.raises(ValueError, match="empty"):
        table.rank(frame.iloc[:0], feature="f")
    mixed = pd.concat([frame, _frame([1.0], [0.01], method="probe")], ignore_index=True)
    with pytest.raises(ValueError, match="pass method="):
        table.rank(mixed, feature="f")
    assert len(table.rank(mixed, feature="f", method="probe")) == 1
    with pytest.raises(ValueError, match="No ranking direction"):
        table.rank(_frame([1.0], [0.01], method="custom"), feature="f")


def test_stale_tables_are_refused_with_how_to_recompute(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr", run_attrs={"model": "x"}, n_samples=2, n_steps=3, chunk_samples=1)
    table.write_attribution(store, _frame([1.0], [0.01]), name="new")
    table.write_attribution(store, _frame([1.0], [0.01]), name="old")
    del store.group["attribution/old"].attrs["format"]  # what denoisefeat 0.1 wrote
    store.finalize()  # re-consolidated, as every finished store is
    assert table.attribution_names(tmp_path / "run.zarr") == ["new", "old"]
    assert len(table.read_attribution(tmp_path / "run.zarr", "new")) == 1
    with pytest.raises(table.StaleTableError, match="recompute it"):
        table.read_attribution(tmp_path / "run.zarr", "old")
    with pytest.raises(table.StaleTableError, match="'old'"):
        table.read_attribution(tmp_path / "run.zarr")


def test_table_attrs_round_trip(tmp_path):
    store = RunStore.create(tmp_path / "run.zarr", run_attrs={"model": "x"}, n_samples=2, n_steps=3, chunk_samples=1)
    frame = _frame([1.0], [0.01])
    frame.attrs.update(alpha=0.1, inference="t", not_json=object())
    table.write_attribution(store, frame, name="t")
    assert table.read_attribution(tmp_path / "run.zarr", "t").attrs == {"alpha": 0.1, "inference": "t"}


# ---------------------------------------------------------------------------------------------
# The float floor and the standardised columns, on a real pipeline's images
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_and_rounded():
    """The toy-sized tiny pipeline's final images, and the same run with a rounding-level edit."""
    pipe = dft.load_pipeline("tiny-class-unet")
    common = dict(class_labels=[0, 1, 2, 3], steps=3, seed=0, keep=())
    clean = _as_images(dft.trace(pipe, **common)["final"].values)
    edit = Edit(layer="up_blocks.0", method="scale", value=1.0 + 2.0**-22)  # a 2-ulp change of one block
    rounded = _as_images(dft.trace(pipe, intervene=[edit], **common)["final"].values)
    return clean, rounded


def test_rounding_level_edits_are_zero_with_p_one(clean_and_rounded):
    clean, rounded = clean_and_rounded
    assert 0 < np.abs(rounded - clean).max() < 1e-5  # the edit reached the output, at rounding level
    names = [*(n for group in FEATURE_GROUPS.values() for n in group), "edge_density", "delta_e2000",
             "colorfulness", "lbp_distance", "band_error:high"]
    ref = _Reference.of(clean, names, image_resolution=inference.float_resolution(torch.float32))
    rows = dict(_ablation_rows(rounded, ref, names, alpha=ALPHA))
    for name, row in rows.items():
        assert (row["effect"], row["ci_low"], row["ci_high"], row["p"]) == (0.0, 0.0, 0.0, 1.0), name
        assert row["disruption"] == 0.0 and row["specificity"] == 0.0


def test_standardised_effect_disruption_and_specificity(clean_and_rounded):
    clean, _ = clean_and_rounded
    names = ["colorfulness", "delta_e2000"]
    ref = _Reference.of(clean, names, image_resolution=inference.float_resolution(torch.float32))
    ref.check_scales()
    other = np.roll(clean, 1, axis=0)  # the edit "replace every image by another sample"
    rows = dict(_ablation_rows(other, ref, names, alpha=ALPHA))
    # ΔE against the clean image is 0 there, so the change is ΔE(x_σ(i), x_i): its mean over its RMS
    change = dft.metrics.METRICS["delta_e2000"](other, clean)
    assert ref.scale["delta_e2000"] == pytest.approx(np.sqrt(np.mean(change**2)))
    assert rows["delta_e2000"]["effect_std"] == pytest.approx(change.mean() / np.sqrt(np.mean(change**2)))
    distance = np.sqrt(((other - clean) ** 2).sum(axis=(1, 2, 3)))
    assert ref.image_scale == pytest.approx(np.sqrt(np.mean(distance**2)))
    assert rows["colorfulness"]["disruption"] == pytest.approx(distance.mean() / ref.image_scale)
    for row in rows.values():
        assert row["specificity"] == pytest.approx(abs(row["effect_std"]) / row["disruption"])


def test_a_feature_that_does_not_vary_is_refused(clean_and_rounded):
    clean, _ = clean_and_rounded
    same = np.repeat(clean[:1], 3, axis=0)
    ref = _Reference.of(same, ["colorfulness"], image_resolution=inference.float_resolution(torch.float32))
    with pytest.raises(ValueError, match=r"\['colorfulness'\] do not vary between the clean samples"):
        ref.check_scales()
