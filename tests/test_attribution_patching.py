"""Attribution patching: exact on a planted affine model, the planted modules named, clear errors.

The linear planted model (:class:`denoisefeat.toy.planted.LinearPlantedDenoiser`, Gaussian data: its
posterior mean is affine in x_t) makes the final image an affine function of either module's output at
any step, so the first-order estimate of an edit at one step, measured by a feature affine in the
image, must equal the exact edited run.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import denoisefeat as dft
from denoisefeat.analyses import rank, read_attribution
from denoisefeat.analyses.attribution_patching import (
    DIFFERENTIABLE_FEATURES,
    GraphBreakError,
    LayerOutputError,
    NonDifferentiableFeatureError,
    agreement,
    attribution_patching,
    attribution_study,
    feature_changes,
)
from denoisefeat.hooks import Edit
from denoisefeat.metrics import FEATURE_GROUPS
from denoisefeat.toy.planted import PLANTED_TRUTH, LinearPlantedDenoiser, linear_planted_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = dict(samples=3, steps=5, seed=0)
LAYERS = ["layout", "detail"]


def _affine(images):
    """A feature affine in each image: mean red minus a third of the top half's blue, weighted by the
    image's place in the batch (so that ``mean`` and ``resample`` edits do not average out to 0)."""
    weight = torch.arange(1, len(images) + 1, dtype=images.dtype)
    return weight * images[:, 0].mean(dim=(1, 2)) - 0.3 * images[:, 2, :16].mean(dim=(1, 2))


@pytest.fixture(scope="module")
def linear():
    return linear_planted_pipeline()


@pytest.fixture(scope="module")
def clean_final(linear):
    return torch.as_tensor(dft.trace(linear, keep=(), **RUN)["final"].values)


def _exact(pipe, layer, method, steps):
    final = dft.trace(pipe, keep=(), intervene=Edit(layer, method, steps=steps), **RUN)["final"].values
    return torch.as_tensor(final)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_the_estimate_is_exact_for_an_affine_model_at_every_step(linear, clean_final, method):
    frame = attribution_patching(linear, layers=LAYERS, method=method, features={"affine": _affine}, **RUN)
    passes = RUN["steps"] * (1 + frame.attrs["disruption_probes"])  # one per step and component
    assert len(frame) == len(LAYERS) * RUN["steps"] and frame.attrs["backward_passes"] == passes
    assert (0.0 < clean_final.min()) and (clean_final.max() < 1.0)  # no clipping: the chain is affine
    for row in frame.itertuples():
        exact = (_affine(_exact(linear, row.layer, method, [row.step_start])) - _affine(clean_final)).double()
        # to the exact runs' float32 rounding
        assert row.effect == pytest.approx(float(exact.mean()), rel=1e-3, abs=1e-6), (row.layer, row.step_start)
    assert frame.loc[frame["layer"] == "layout", "effect"].abs().max() > 50 * 1e-6  # well above the tolerance


@pytest.mark.parametrize("scheduler", ["euler", "ddpm", "euler-ancestral"])
def test_the_estimate_is_exact_with_other_and_stochastic_schedulers(linear, scheduler):
    run = {**RUN, "steps": 4, "scheduler": scheduler}  # stochastic ones: the recomputed steps draw the same noise
    frame = attribution_patching(linear, layers=["layout"], method="mean", features={"affine": _affine}, **run)
    clean = torch.as_tensor(dft.trace(linear, keep=(), **run)["final"].values)
    for row in frame.itertuples():
        edited = dft.trace(linear, keep=(), intervene=Edit("layout", "mean", steps=[row.step_start]), **run)
        exact = (_affine(torch.as_tensor(edited["final"].values)) - _affine(clean)).double().mean()
        assert row.effect == pytest.approx(float(exact), rel=1e-3, abs=1e-6), row.step_start
    assert frame["effect"].abs().max() > 50 * 1e-6


def test_a_window_sums_its_steps_and_an_identity_edit_is_exactly_zero(linear):
    steps = attribution_patching(linear, layers=LAYERS, features={"affine": _affine}, **RUN)
    windows = attribution_patching(linear, layers=LAYERS, windows=[(0, 2), (2, 5)], features={"affine": _affine},
                                   **RUN)
    for row in windows.itertuples():
        inside = steps[(steps["layer"] == row.layer) & (steps["step_start"] >= row.step_start)
                       & (steps["step_stop"] <= row.step_stop)]
        assert row.effect == pytest.approx(inside["effect"].sum(), rel=1e-9, abs=1e-12)
    null = attribution_patching(linear, layers=LAYERS, method="identity", features=["edges", "color"], **RUN)
    assert (null[["effect", "ci_low", "ci_high", "effect_std"]].to_numpy() == 0).all() and (null["p"] == 1).all()


def test_the_planted_modules_rank_first_for_each_feature_group():
    pipe = dft.load_pipeline("planted")
    frame = attribution_patching(pipe, layers=LAYERS, windows=4, samples=8, steps=12, seed=0)
    for group, truth in PLANTED_TRUTH.items():
        top = rank(frame, feature=FEATURE_GROUPS[group][0]).iloc[0]
        assert (top["layer"], bool(top["significant"])) == (truth, True), (group, top.to_dict())
    assert (frame["method"] == "attribution_patching:zero").all()
    assert (frame["disruption"] >= 0).all() and (frame["disruption"] > 0).any()
    assert set(frame.loc[frame["surrogate"] != "", "feature"]) == {"texture_spectrum_distance",
                                                                   "object_mask_iou", "object_color_distance"}


def test_the_surrogates_rank_the_planted_modules_like_their_metrics():
    """Exact ablations of the planted modules in the last steps: each surrogate's change orders the two
    modules as its metric's own change does (the surrogate's part of the estimate's error, apart from
    the first order)."""
    from denoisefeat.metrics import compute_metrics

    pipe = dft.load_pipeline("planted")
    run = dict(samples=6, steps=12, seed=0, keep=())
    clean = dft.trace(pipe, **run)["final"].values.astype(np.float64)
    by_layer = {}
    for layer in LAYERS:
        edited = dft.trace(pipe, intervene=Edit(layer, "zero", steps=range(9, 12)), **run)["final"].values
        edited = np.clip(edited.astype(np.float64), 0, 1)
        metric = compute_metrics(edited, clean, names=[n for g in FEATURE_GROUPS.values() for n in g])
        surrogate = feature_changes(edited, clean)
        base = compute_metrics(clean, clean, names=list(metric))
        by_layer[layer] = {name: (float(np.mean(metric[name] - base[name])), float(np.mean(surrogate[name])))
                           for name in metric}
    for name in by_layer["layout"]:
        (m_layout, s_layout), (m_detail, s_detail) = by_layer["layout"][name], by_layer["detail"][name]
        assert (abs(m_layout) > abs(m_detail)) == (abs(s_layout) > abs(s_detail)), (name, by_layer)
        assert np.sign(s_layout) in (0, np.sign(m_layout)) and np.sign(s_detail) in (0, np.sign(m_detail)), name


def test_the_study_scans_the_top_cells_exactly_and_reports_agreement(linear, tmp_path):
    store = tmp_path / "run.zarr"
    frame = attribution_study(linear, layers=LAYERS, top_k=2, windows=[(0, 3), (3, 5)], features=["edges"],
                              store=store, **RUN)
    methods = set(frame["method"])
    assert methods == {"attribution_patching:zero", "ablation:zero"}
    estimated, exact = (frame[frame["method"] == m] for m in sorted(methods, reverse=True))
    whole = read_attribution(store, "attribution_patching")
    chosen = {(r.layer, r.step_start, r.step_stop) for by in ("effect", "specificity")
              for r in rank(whole, feature="boundary_width", by=by, top=2).itertuples()}  # both criteria's top 2
    assert len(estimated) == len(exact) == frame.attrs["cells_scanned"] == len(chosen) >= 2
    assert {(r.layer, r.step_start, r.step_stop) for r in exact.itertuples()} == chosen
    assert set(frame.attrs["agreement"]) == {"boundary_width"}
    assert frame.attrs["agreement"] == agreement(estimated, exact)
    assert frame.attrs["exact_denoiser_calls"] > 0 and frame.attrs["cells_ranked"] == 4
    assert len(read_attribution(store, "attribution_study")) == len(frame)
    assert len(read_attribution(store, "attribution_patching")) == 4 and dft.open_run(store)["x0"].shape[1] == 5


def test_the_package_exports_the_functions_not_the_module():
    import importlib

    module = importlib.import_module("denoisefeat.analyses.attribution_patching")
    from denoisefeat.analyses import attribution_patching as exported

    assert callable(exported) and exported is module.attribution_patching


def test_agreement_is_the_rank_correlation_of_the_shared_cells(linear):
    frame = attribution_patching(linear, layers=LAYERS, features={"affine": _affine}, **RUN)
    other = frame.assign(effect=-frame["effect"], effect_std=-frame["effect_std"])
    result = agreement(frame, other)["affine"]
    assert result["spearman"] == pytest.approx(-1.0) and result["n_cells"] == len(frame)


def test_features_without_a_gradient_are_refused_before_anything_runs(linear):
    assert "boundary_width" in DIFFERENTIABLE_FEATURES and "edge_density" not in DIFFERENTIABLE_FEATURES
    with pytest.raises(NonDifferentiableFeatureError, match="not differentiable.*no smooth surrogate"):
        attribution_patching(linear, layers=LAYERS, features=["edge_density"], **RUN)
    with pytest.raises(NonDifferentiableFeatureError, match="extremum"):
        attribution_patching(linear, layers=LAYERS, features=["ssim"], **RUN)
    with pytest.raises(ValueError, match="Unknown feature 'colour'"):
        attribution_patching(linear, layers=LAYERS, features=["colour"], **RUN)
    with pytest.raises(ValueError, match="Unknown method"):
        attribution_patching(linear, layers=LAYERS, method="blur", **RUN)
    with pytest.raises(ValueError, match="callables"):
        attribution_study(linear, layers=LAYERS, features={"affine": _affine}, **RUN)


class _DictOutput(torch.nn.Module):
    """Wraps a band module; returns a dict (no tensor to differentiate)."""

    def __init__(self, band):
        super().__init__()
        self.band = band

    def forward(self, sample, alpha_bar):
        return {"band": self.band(sample, alpha_bar)}


class _DictLayout(LinearPlantedDenoiser):
    def forward(self, sample, timestep, return_dict: bool = True):
        alpha_bar = self.alpha_bar(timestep, batch=sample.shape[0])
        x0 = self.layout(sample, alpha_bar)["band"] + self.detail(sample, alpha_bar)
        out = (sample.double() - alpha_bar.sqrt().reshape(-1, 1, 1, 1) * x0) / (1 - alpha_bar).sqrt().reshape(-1, 1,
                                                                                                               1, 1)
        return (out.to(sample.dtype),)


def test_a_layer_without_a_tensor_output_is_refused():
    denoiser = _DictLayout()
    denoiser.layout = _DictOutput(denoiser.layout)
    pipe = linear_planted_pipeline()
    pipe.unet = denoiser.eval()
    with pytest.raises(LayerOutputError, match="'layout' returned dict"):
        attribution_patching(pipe, layers=["layout"], features={"affine": _affine}, **RUN)


def _detaching_step(self, model_output, timestep, sample, **kwargs):
    out = DDIMScheduler.step(self, model_output, timestep, sample, **kwargs)
    out.prev_sample = out.prev_sample.detach()
    return out


def _in_place_step(self, model_output, timestep, sample, **kwargs):
    out = DDIMScheduler.step(self, model_output, timestep, sample, **kwargs)
    sample.add_(0.0)  # an in-place update of x_t, which requires grad
    return out


@pytest.mark.parametrize(("step", "match"), [(_detaching_step, "carries no autograd graph"),
                                             (_in_place_step, "in place")])
def test_a_scheduler_step_that_breaks_the_graph_is_refused(step, match):
    # a DDIM variant (named as DDIM, whose samples it holds the same way) with a step that breaks the graph
    variant = type("DDIMScheduler", (DDIMScheduler,), {"step": step})
    pipe = linear_planted_pipeline()
    pipe.scheduler = variant.from_config(pipe.scheduler.config)
    with pytest.raises(GraphBreakError, match=match):
        attribution_patching(pipe, layers=LAYERS, features={"affine": _affine}, **RUN)


def test_a_multistep_scheduler_is_refused():
    pipe = linear_planted_pipeline()
    with pytest.raises(GraphBreakError, match="past model outputs"):
        attribution_patching(pipe, layers=LAYERS, features={"affine": _affine}, scheduler="dpm++", **RUN)


def test_estimates_are_finite_and_layers_in_network_order(linear):
    frame = attribution_patching(linear, layers=["detail", "layout"], features=["edges", "color"], **RUN)
    assert list(dict.fromkeys(frame["layer"])) == ["layout", "detail"]
    assert np.isfinite(frame[["effect", "ci_low", "ci_high", "p", "p_adj", "effect_std"]].to_numpy()).all()
    assert (frame["n"] == RUN["samples"]).all()


def test_a_feature_that_does_not_vary_between_samples_is_refused(linear):
    with pytest.raises(ValueError, match=r"do not vary between the clean samples"):
        attribution_patching(linear, layers=LAYERS, features={"flat": lambda images: images.sum(dim=(1, 2, 3)) * 0},
                             **RUN)


class _QuadraticDetail(LinearPlantedDenoiser):
    """The linear planted model with x̂_0 quadratic in ``detail``'s output at the last step: the first
    order is not exact for a ``detail`` edit there, but the edit's exact Δx (``exact_step``) reaches
    the final image with no later step to linearise."""

    def forward(self, sample, timestep, return_dict: bool = True):
        from denoisefeat.toy.planted import _prediction

        alpha_bar = self.alpha_bar(timestep, batch=sample.shape[0])
        detail = self.detail(sample, alpha_bar)
        last = (alpha_bar > 0.99).to(detail.dtype).reshape(-1, 1, 1, 1)  # the last step only: affine before it
        x0 = self.layout(sample, alpha_bar) + detail + last * detail * detail.abs()
        return _prediction(sample, x0, alpha_bar, self.config.prediction_type, return_dict)


def test_exact_step_is_exact_where_only_the_edited_step_is_nonlinear(linear):
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline(unet=_QuadraticDetail(), scheduler=linear.scheduler)
    last = RUN["steps"] - 1
    clean = torch.as_tensor(dft.trace(pipe, keep=(), **RUN)["final"].values)
    assert (0.0 < clean.min()) and (clean.max() < 1.0)  # no clipping: the image is x_final's affine map
    exact = float((_affine(_exact(pipe, "detail", "zero", [last])) - _affine(clean)).double().mean())
    estimate = {est: attribution_patching(pipe, layers=["detail"], windows=[(last, last + 1)], estimator=est,
                                          features={"affine": _affine}, **RUN)
                for est in ("first_order", "exact_step")}
    assert estimate["exact_step"]["effect"].item() == pytest.approx(exact, rel=1e-3, abs=1e-6)
    first = estimate["first_order"]["effect"].item()
    assert abs(first - exact) > 0.05 * abs(exact) > 50 * 1e-6  # the quadratic term is far above the tolerance
    frame = estimate["exact_step"]
    assert (frame["estimator"] == "exact_step").all() and frame.attrs["estimator"] == "exact_step"
    # one more denoiser call per layer and step of a window than the first order: the exact single-step edits
    assert frame.attrs["denoiser_calls"] == estimate["first_order"].attrs["denoiser_calls"] + 1


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_exact_step_equals_the_first_order_on_the_affine_model(linear, method):
    run = dict(layers=LAYERS, method=method, windows=[(0, 2), (2, 5)], features={"affine": _affine}, **RUN)
    first, step = (attribution_patching(linear, estimator=est, **run) for est in ("first_order", "exact_step"))
    np.testing.assert_allclose(step["effect"], first["effect"], rtol=1e-3, atol=1e-6)


def test_an_unknown_estimator_is_refused(linear):
    with pytest.raises(ValueError, match="estimator"):
        attribution_patching(linear, layers=LAYERS, estimator="second_order", features={"affine": _affine}, **RUN)


def test_the_disruption_sketch_estimates_the_exact_scans_disruption_on_the_affine_model(linear):
    """On the affine model ΔI is exact, so the probes' estimate of ‖ΔI‖ is unbiased in ‖ΔI‖²: with many
    probes it matches the exact scan's disruption per cell; specificity follows from it as in the scan."""
    windows = [(0, 1), (2, 3), (4, 5)]
    frame = attribution_patching(linear, layers=LAYERS, windows=windows, method="mean", features={"affine": _affine},
                                 disruption_probes=600, **RUN)
    exact = dft.analyses.ablation_scan(linear, layers=LAYERS, windows=windows, method="mean", features=["edges"],
                                       **RUN)
    keys = ["layer", "step_start", "step_stop"]
    merged = frame.merge(exact.drop_duplicates(keys), on=keys, suffixes=("", "_exact"))
    assert len(merged) == len(LAYERS) * len(windows)
    assert (merged["disruption_exact"] > 1e-3).sum() >= 3 and (merged["disruption_exact"] == 0).sum() >= 1
    # 1/sqrt(2 * 600 * 3) = 1.7 % relative error of the norm's mean; 8 % is > 4 sigma
    np.testing.assert_allclose(merged["disruption"], merged["disruption_exact"], rtol=0.08)
    moved = merged["disruption"] > 0
    expected = np.where(moved, merged["effect_std"].abs() / merged["disruption"].where(moved, 1.0), 0.0)
    np.testing.assert_allclose(merged["specificity"], expected, rtol=1e-12)


def test_without_probes_disruption_is_nan_and_ranking_needs_by_effect(linear):
    frame = attribution_patching(linear, layers=LAYERS, features={"affine": _affine}, disruption_probes=0, **RUN)
    assert frame["disruption"].isna().all() and frame["specificity"].isna().all()
    assert frame.attrs["backward_passes"] == RUN["steps"]
    with pytest.raises(ValueError, match="no disruption estimate.*by='effect'"):
        rank(frame, feature="affine")
    assert len(rank(frame, feature="affine", by="effect", top=3)) == 3
    null = attribution_patching(linear, layers=LAYERS, method="identity", features={"affine": _affine}, **RUN)
    assert (null["disruption"] == 0).all() and (null["specificity"] == 0).all()


@pytest.mark.parametrize("probes", [-1, 2.5, True, "8"])
def test_a_bad_number_of_disruption_probes_is_refused(linear, probes):
    with pytest.raises(ValueError, match="disruption_probes must be a non-negative"):
        attribution_patching(linear, layers=LAYERS, features={"affine": _affine}, disruption_probes=probes, **RUN)


def test_a_failed_overwrite_keeps_the_old_store_and_an_existing_store_is_refused_first(linear, tmp_path):
    store = tmp_path / "run.zarr"
    first = attribution_patching(linear, layers=LAYERS, features={"affine": _affine}, store=store, **RUN)
    before = read_attribution(store, "attribution_patching")

    def broken(images):
        raise RuntimeError("feature failed mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):  # after the new clean run was traced
        attribution_patching(linear, layers=LAYERS, features={"broken": broken}, store=store, overwrite=True, **RUN)
    after = read_attribution(store, "attribution_patching")
    assert after.equals(before) and set(after["feature"]) == {"affine"} and len(after) == len(first)
    assert dft.open_run(store)["x0"].shape[1] == RUN["steps"]
    with pytest.raises(dft.store.RunExistsError):
        attribution_patching(linear, layers=LAYERS, features={"broken": broken}, store=store, **RUN)


def test_the_shape_surrogate_sketches_the_symmetric_difference_of_the_masks():
    """A red disc moved by 3 px on grey: ``‖m − m_ref‖² / ‖m_ref‖²`` of binary-like maps is
    ``|A Δ B| / |B|``, which the squared sketch estimates without bias; over 256 copies (independent
    probes; relative standard deviation √(2 / SHAPE_PROBES) each) the mean is within 15 % (> 3 σ)."""
    yy, xx = np.mgrid[:32, :32]

    def disc(cx):
        img = np.full((3, 32, 32), 0.5)
        inside = (yy - 16) ** 2 + (xx - cx) ** 2 <= 7**2
        img[:, inside] = np.array([0.9, 0.1, 0.1])[:, None]
        return img, inside

    (ref, b), (moved, a) = disc(15), disc(18)
    changes = feature_changes(np.stack([moved] * 256), np.stack([ref] * 256), features=["object_mask_iou"])
    assert np.all(changes["object_mask_iou"] < 0)
    assert np.mean(changes["object_mask_iou"] ** 2) == pytest.approx((a ^ b).sum() / b.sum(), rel=0.15)
    same = feature_changes(np.stack([ref] * 4), np.stack([ref] * 4), features=["object_mask_iou"])
    assert np.abs(same["object_mask_iou"]).max() < 1e-12
