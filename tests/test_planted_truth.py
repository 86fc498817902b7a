"""Planted ground truth: with default settings every attribution method names the module that makes
each feature group, and a null edit gives no significant row.

The planted model (:mod:`denoisefeat.toy.planted`) is the exact posterior-mean denoiser of a finite
DiffShapes set whose module ``layout`` computes the low band of x̂0 and ``detail`` the high band
(:data:`~denoisefeat.toy.planted.PLANTED_TRUTH`: shape and colour in ``layout``, texture and edges
in ``detail``).  Each group is measured by its selective metric (:data:`denoisefeat.metrics.FEATURE_GROUPS`).
"""

import numpy as np
import pytest
import torch

import denoisefeat as dft
from denoisefeat.analyses import ablation_scan, causal_trace, rank
from denoisefeat.metrics import FEATURE_GROUPS
from denoisefeat.toy.planted import PLANTED_TRUTH, planted_pipeline

LAYERS = ["layout", "detail"]
SCAN = dict(layers=LAYERS, windows=4, samples=16, steps=20)
#: The factor in which the corrupted run differs from the clean one, for each group: a minimal pair.
#: Shape uses position pairs: at 32 px two outlines of the same size and place differ only above the
#: band cutoff (restoring ``detail`` recovers them, tested below), while where the object is lies in
#: the low band.
CORRUPTION = {"texture": "texture_kind", "edges": "edge_sharpness", "shape": "position", "color": "color"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted():
    return dft.load_pipeline("planted")


def _named(frame, group):
    """The top row of the group's metric by rank()'s defaults."""
    return rank(frame, feature=FEATURE_GROUPS[group][0]).iloc[0]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablation_names_the_planted_module(planted, method):
    frame = ablation_scan(planted, method=method, **SCAN)
    for group, truth in PLANTED_TRUTH.items():
        top = _named(frame, group)
        assert (top["layer"], bool(top["significant"])) == (truth, True), (group, top.to_dict())


def test_a_null_edit_gives_no_significant_row(planted):
    frame = ablation_scan(planted, method="identity", **SCAN)
    assert (frame["p"] == 1.0).all() and not (frame["p_adj"] < 0.05).any()
    assert (frame[["effect", "ci_low", "ci_high", "effect_std", "disruption", "specificity"]].to_numpy() == 0).all()


def _minimal_pair_seeds(pipe, *, clean_seeds, candidates, steps):
    """Clean seeds and, for each, a seed whose run ends on the partner of the clean run's data set image."""
    def ends(seeds):
        run = dft.trace(pipe, seed=list(seeds), samples=len(seeds), steps=steps, keep=(), batch_size=64)
        return pipe.unet.nearest_image(torch.as_tensor(run["final"].values))[0].numpy()

    n = pipe.unet.config.n_images
    landed = dict(zip(candidates, ends(candidates)))
    kept, corrupt = [], []
    for seed, image in zip(clean_seeds, ends(clean_seeds)):
        partner = (image + n // 2) % n  # pairs are images i and i + N/2
        match = next((s for s, e in landed.items() if e == partner and s not in corrupt), None)
        if match is not None:
            kept.append(seed)
            corrupt.append(match)
    return kept, corrupt


@pytest.mark.parametrize("group", list(CORRUPTION))
def test_causal_tracing_names_the_planted_module(group):
    pipe = planted_pipeline(n_images=16, pairs=CORRUPTION[group])
    pipe.set_progress_bar_config(disable=True)
    clean, corrupt = _minimal_pair_seeds(pipe, clean_seeds=range(12), candidates=range(1000, 1400), steps=20)
    assert len(clean) >= 8
    frame = causal_trace(pipe, layers=LAYERS, windows=4, corrupt="noise", seed=clean, corrupt_seed=corrupt,
                         samples=len(clean), steps=20, features=[group])
    top = _named(frame, group)
    assert (top["layer"], bool(top["significant"])) == (PLANTED_TRUTH[group], True), top.to_dict()
    assert top["effect"] > 0.3  # a substantial part of the clean feature is recovered


def test_same_place_outlines_live_in_the_high_band():
    """Two shapes of one size at one place differ above the cutoff: restoring ``detail`` recovers them."""
    pipe = planted_pipeline(n_images=16, pairs="shape")
    pipe.set_progress_bar_config(disable=True)
    clean, corrupt = _minimal_pair_seeds(pipe, clean_seeds=range(12), candidates=range(1000, 1400), steps=20)
    frame = causal_trace(pipe, layers=LAYERS, windows=[(15, 20)], corrupt="noise", seed=clean, corrupt_seed=corrupt,
                         samples=len(clean), steps=20, features=["shape"])
    recovered = frame.set_index("layer")["effect"]
    assert recovered["detail"] > 0.8 > 0.2 > recovered["layout"]
    assert np.isfinite(recovered).all()


def test_probes_name_the_planted_module_when_the_bands_carry_different_information():
    """Probes measure information, not causation: on ``planted-factorized`` (independent bands, each module
    computed from its own band of x_t) the module that holds a factor decodes it and the other is at chance.

    (On ``planted`` both modules are linear images of the same posterior weights, so they hold the same
    information and a linear probe cannot tell them apart; see docs/reading-attribution-tables.md.)
    """
    import xarray as xr

    from denoisefeat.probes import probe_table
    from denoisefeat.toy.diffshapes import condition_names

    pipe = dft.load_pipeline("planted-factorized")
    run = dft.trace(pipe, samples=40, steps=20, seed=0, keep=(), record={"layout": "full", "detail": "full"},
                    record_steps=[19])
    layout, detail = pipe.unet.ends(torch.as_tensor(run["final"].values))
    names_of = {"shape": (pipe.unet.layout_labels[layout], 0), "color": (pipe.unet.layout_labels[layout], 1),
                "texture": (pipe.unet.detail_labels[detail], 2)}
    coords = {"sample": run["final"]["sample"].values}
    targets = {group: xr.DataArray(np.array([condition_names(int(v))[k] for v in labels]), dims="sample",
                                   coords=coords) for group, (labels, k) in names_of.items()}
    targets["edges"] = xr.DataArray(pipe.unet.detail_sharp[detail].numpy().astype(int), dims="sample", coords=coords)
    frame = probe_table(run, targets=targets, windows=1, cv=4, alphas=(100.0,), control="shuffled", n_boot=200,
                        kind="logistic")
    for group, truth in PLANTED_TRUTH.items():
        top = rank(frame, feature=group, method="probe").iloc[0]
        assert (top["layer"], bool(top["significant"])) == (truth, True), (group, top.to_dict())
        other = frame[(frame["feature"] == group) & (frame["layer"] != truth)].iloc[0]
        assert not other["p_adj"] < 0.05  # the module without the factor decodes nothing beyond chance


@pytest.fixture(scope="module")
def factorized_run(tmp_path_factory):
    """``planted-factorized`` traced with both modules recorded in full, and its group metrics per step."""
    pipe = dft.load_pipeline("planted-factorized")
    run = dft.trace(pipe, samples=40, steps=20, seed=0, record={"layout": "full", "detail": "full"},
                    store=tmp_path_factory.mktemp("factorized") / "run.zarr")
    feats = dft.features(run, metrics=[FEATURE_GROUPS[group][0] for group in PLANTED_TRUTH])
    return run, feats


def _change_tables(run, feats):
    from denoisefeat.analyses import correlate, regress
    from denoisefeat.analyses.correlation import activity, feature_change

    acts = {layer: activity(run.acts(layer)) for layer in LAYERS}  # default: the per-step change of the output
    change = feature_change(feats[[FEATURE_GROUPS[group][0] for group in PLANTED_TRUTH]])
    return {"ols": regress(acts, change), "pearson": correlate(acts, change)}


@pytest.mark.parametrize("group", ["shape", "color", "texture"])
def test_regression_and_correlation_name_the_planted_module(factorized_run, group):
    """Per-step feature change against the per-step change of each module (the defaults), ranked by
    ``effect_std`` in one scale per feature: the planted module comes first, significant."""
    for method, frame in _change_tables(*factorized_run).items():
        top = rank(frame, feature=FEATURE_GROUPS[group][0]).iloc[0]
        assert (top["layer"], bool(top["significant"])) == (PLANTED_TRUTH[group], True), (method, top.to_dict())


def _explained(values: np.ndarray, groups: np.ndarray) -> float:
    """The share of the variance of ``values`` explained by ``groups`` (one-way ANOVA's R²)."""
    total = ((values - values.mean()) ** 2).sum()
    within = sum(((values[groups == g] - values[groups == g].mean()) ** 2).sum() for g in np.unique(groups))
    return float(1 - within / total)


def test_the_factorized_models_final_boundary_width_is_the_layouts_and_regression_says_so(factorized_run):
    """The edges cell on ``planted-factorized``, with its truth measured rather than assumed.

    Its images are ``L(a_i) + H(b_j)``: the low band of one object and the high band of *another*
    (other shape, place and colour).  The only chromatic boundary of the final image is the layout
    object's, so its boundary width is set by which layout the run ends on far more than by whether
    the detail object was drawn sharp or soft (the detail's sharp edge lies elsewhere): measured, the
    layout choice explains 0.67 of the final width's variance, the sharpness 0.07.  The per-step
    statistics must then name ``layout`` for this metric, and do.  (Edges planted in ``detail`` are
    checked on ``planted``, whose two bands belong to the same object: ablation, tracing, probes above.)
    """
    run, feats = factorized_run
    unet = dft.load_pipeline("planted-factorized").unet
    final = np.asarray(run.dataset["x0"].isel(step=-1).values) / 2 + 0.5
    layout, detail = (index.numpy() for index in unet.ends(torch.from_numpy(np.clip(final, 0, 1))))
    width = feats["boundary_width"].isel(step=-1).values
    by_layout, by_sharpness = _explained(width, layout), _explained(width, unet.detail_sharp.numpy()[detail])
    assert by_layout > 0.5 and by_layout > 5 * by_sharpness, (by_layout, by_sharpness)
    for method, frame in _change_tables(run, feats).items():
        top = rank(frame, feature="boundary_width").iloc[0]
        assert (top["layer"], bool(top["significant"])) == ("layout", True), (method, top.to_dict())
