"""The selectivity matrix criterion: every FEATURE_GROUPS metric responds to its own factors
at least 5 times more than to any other factor, on 64 DiffShapes counterfactual pairs per
factor, at 32 and 64 px (about 12 s on one core)."""

import numpy as np
import pytest
import xarray as xr

from denoisefeat.metrics import FEATURE_GROUPS, METRICS
from denoisefeat.metrics.selectivity import OWN_FACTORS, metric_selectivity, selectivity_ratio
from denoisefeat.toy.diffshapes import FACTORS


def test_feature_groups_are_registered_and_usable_by_scans():
    assert set(FEATURE_GROUPS) == {"edges", "texture", "shape", "color"} == set(OWN_FACTORS)
    for group, names in FEATURE_GROUPS.items():
        assert 1 <= len(names) <= 2
        for name in names:
            assert METRICS[name].needs_reference in (None, "image"), name


@pytest.mark.parametrize("size", [32, 64])
def test_feature_group_metrics_are_selective(size):
    matrix = metric_selectivity(n_pairs=64, size=size, seed=0)
    assert matrix.dims == ("metric", "factor") and list(matrix["factor"].values) == list(FACTORS)
    ratio = selectivity_ratio(matrix)
    failing = {m: float(r) for m, r in zip(ratio["metric"].values, ratio.values) if not r >= 5}
    assert not failing, f"selectivity ratio below 5 at {size} px: {failing}\n{matrix.to_pandas()}"
    # Every metric responds to each of its own factors at all.
    for group, names in FEATURE_GROUPS.items():
        for name in names:
            assert (matrix.sel(metric=name, factor=list(OWN_FACTORS[group])) > 0).all()


def test_selectivity_ratio_on_a_hand_made_matrix():
    m = xr.DataArray([[1.0, 0.1, 0.2], [1.0, 2.0, 0.5]], dims=("metric", "factor"),
                     coords={"metric": ["a", "b"], "factor": ["f", "g", "h"]})
    r = selectivity_ratio(m, groups={"x": ("a",), "y": ("b",)}, own_factors={"x": ("f",), "y": ("g", "h")})
    np.testing.assert_allclose(r.values, [5.0, 0.5])
    assert list(r["group"].values) == ["x", "y"]
    clean = m.copy(data=[[1.0, 0.0, 0.0], [0.0, 2.0, 0.5]])
    assert selectivity_ratio(clean, groups={"x": ("a",), "y": ("b",)},
                             own_factors={"x": ("f",), "y": ("g", "h")}).values.tolist() == [np.inf, np.inf]
    with pytest.raises(ValueError, match="no group"):
        selectivity_ratio(m, groups={"x": ("a",)}, own_factors={"x": ("f",)})


def test_metric_selectivity_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown factors"):
        metric_selectivity(factors=["hue"], n_pairs=2)
    with pytest.raises(ValueError, match="unknown metrics"):
        metric_selectivity(metrics=["nope"], n_pairs=2)
    with pytest.raises(ValueError, match="mask or edge-map"):
        metric_selectivity(metrics=["mask_iou_gt"], n_pairs=2)
    with pytest.raises(ValueError, match="n_pairs"):
        metric_selectivity(n_pairs=0)


def test_selectivity_heatmap_normalises_rows():
    from denoisefeat.viz import selectivity_heatmap

    m = xr.DataArray([[1.0, 0.1], [0.0, 0.0]], dims=("metric", "factor"),
                     coords={"metric": ["a", "b"], "factor": ["f", "g"]})
    fig = selectivity_heatmap(m)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, float), [[1.0, 0.1], [0.0, 0.0]])
    assert list(fig.data[0].text[0]) == ["1", "0.1"]
    with pytest.raises(ValueError, match="metric, factor"):
        selectivity_heatmap(m.rename(metric="x"))
