"""Tests of the metric registry and compute_metrics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import denoisefeat.metrics as M
from denoisefeat.metrics import METRICS, REFERENCE_KINDS, MetricSpec, compute_metrics

RNG = np.random.default_rng(17)


def trajectory(S=2, T=3, n=32):
    """Smooth random final images and a fake trajectory converging to them, (S, T, 3, n, n)."""
    from scipy import ndimage as ndi

    final = np.clip(ndi.gaussian_filter(RNG.random((S, 3, n, n)), (0, 0, 2, 2)) * 4 - 1.5, 0, 1)
    w = np.linspace(0, 1, T)[None, :, None, None, None]
    noise = RNG.standard_normal((S, T, 3, n, n))
    traj = np.clip(w * final[:, None] + (1 - w) * (0.5 + 0.2 * noise), 0, 1)
    return traj, final[:, None]


def test_public_api():
    for name in M.__all__:
        assert hasattr(M, name), name
    assert {
        "ssim",
        "ms_ssim",
        "psnr",
        "band_ssim",
        "edge_density",
        "edge_sharpness",
        "edge_prf",
        "glcm_features",
        "lbp_distance",
        "mask_iou",
        "hu_moment_distance",
        "lowpass_ssim",
        "mean_lab",
        "delta_e2000",
        "hue_histogram_distance",
        "colorfulness",
        "color_consistency",
        "METRICS",
        "compute_metrics",
    } <= set(M.__all__)


def test_registry_entries_are_well_formed():
    kinds = {"similarity", "edges", "texture", "shape", "color"}
    for name, spec in METRICS.items():
        assert isinstance(spec, MetricSpec) and spec.name == name
        assert callable(spec.func)
        lo, hi = spec.range
        assert lo < hi
        assert spec.direction in (True, False, None)
        assert spec.needs_reference in REFERENCE_KINDS
        assert spec.kind in kinds
    assert {s.kind for s in METRICS.values()} == kinds
    with pytest.raises(dataclasses.FrozenInstanceError):
        METRICS["ssim"].name = "x"
    with pytest.raises(TypeError):
        METRICS["new"] = METRICS["ssim"]
    with pytest.raises(ValueError):
        MetricSpec("x", M.ssim, (0, 1), True, "reference", "similarity")


def test_compute_metrics_default_set_shapes_and_ranges():
    traj, ref = trajectory()
    vals = compute_metrics(traj, ref)
    expected = [n for n, s in METRICS.items() if s.needs_reference in (None, "image")]
    assert list(vals) == expected
    for name, v in vals.items():
        assert v.shape == (2, 3) and v.dtype == np.float64, name
        lo, hi = METRICS[name].range
        finite = v[np.isfinite(v)]
        assert np.all((finite >= lo - 1e-9) & (finite <= hi + 1e-9)), (name, v)
        assert not np.isnan(v).any(), name


def test_compute_metrics_final_step_is_ideal():
    traj, ref = trajectory()
    traj[:, -1] = ref[:, 0]
    vals = compute_metrics(traj, ref)
    for name, v in vals.items():
        spec = METRICS[name]
        if spec.direction is True:
            np.testing.assert_allclose(v[:, -1], spec.range[1], err_msg=name)
        elif spec.direction is False:
            np.testing.assert_allclose(v[:, -1], spec.range[0], atol=1e-9, err_msg=name)
    np.testing.assert_allclose(vals["color_consistency"][:, -1], 0.0, atol=1e-9)


def test_compute_metrics_agrees_with_public_functions():
    traj, ref = trajectory()
    vals = compute_metrics(traj, ref)
    ref_edges = M.edge_map(ref)
    np.testing.assert_allclose(vals["ssim"], M.ssim(traj, ref, data_range=1.0))
    np.testing.assert_allclose(vals["ms_ssim"], M.ms_ssim(traj, ref, data_range=1.0))
    np.testing.assert_allclose(vals["psnr"], M.psnr(traj, ref, data_range=1.0))
    np.testing.assert_allclose(
        vals["lowpass_ssim"], M.lowpass_ssim(traj, ref, data_range=1.0), atol=1e-12
    )
    np.testing.assert_allclose(
        vals["band_ssim_high"], M.band_ssim(traj, ref, data_range=1.0)[..., 2]
    )
    np.testing.assert_allclose(vals["edge_density"], M.edge_density(traj))
    np.testing.assert_allclose(vals["edge_sharpness"], M.edge_sharpness(traj))
    np.testing.assert_allclose(vals["edge_f1"], M.edge_prf(traj, ref_edges)[..., 2])
    np.testing.assert_allclose(vals["glcm_correlation"], M.glcm_features(traj)[..., 3])
    np.testing.assert_allclose(vals["lbp_distance"], M.lbp_distance(traj, ref))
    np.testing.assert_allclose(vals["wavelet_texture_energy"], M.wavelet_texture_energy(traj))
    np.testing.assert_allclose(vals["mask_iou"], M.mask_iou(traj, ref))
    np.testing.assert_allclose(vals["hu_moment_distance"], M.hu_moment_distance(traj, ref))
    np.testing.assert_allclose(vals["lab_b"], M.mean_lab(traj)[..., 2])
    np.testing.assert_allclose(vals["delta_e2000"], M.delta_e2000(traj, ref))
    np.testing.assert_allclose(
        vals["color_consistency"], M.color_consistency(traj, ref), atol=1e-12
    )
    np.testing.assert_allclose(vals["hue_histogram_distance"], M.hue_histogram_distance(traj, ref))
    np.testing.assert_allclose(vals["colorfulness"], M.colorfulness(traj))
    # a spec evaluates on its own too
    np.testing.assert_allclose(METRICS["edge_recall"](traj, ref), vals["edge_recall"])


def test_compute_metrics_selection_and_references():
    traj, ref = trajectory(S=1, T=2)
    no_ref = compute_metrics(traj)
    assert set(no_ref) == {n for n, s in METRICS.items() if s.needs_reference is None}
    grey = compute_metrics(traj[:, :, :1], ref[:, :, :1])
    assert not any(METRICS[n].kind == "color" for n in grey)
    sel = compute_metrics(traj, ref, names=["edge_density", "ssim"])
    assert list(sel) == ["ssim", "edge_density"]  # registry order
    masks = RNG.random((1, 1, 32, 32)) > 0.5
    gt = compute_metrics(
        traj, ref, masks=masks, edges=masks, names=["mask_iou_gt", "edge_f1_gt", "color_spread_gt"]
    )
    assert all(v.shape == (1, 2) for v in gt.values())
    with pytest.raises(KeyError, match="ssmi"):
        compute_metrics(traj, ref, names=["ssmi"])
    with pytest.raises(ValueError, match="reference"):
        compute_metrics(traj, names=["ssim"])
    with pytest.raises(ValueError, match="reference"):
        METRICS["ssim"](traj)
    bad = traj.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(bad, ref)


def test_compute_metrics_constant_images_are_defined():
    c = np.full((1, 2, 3, 32, 32), 0.5)
    vals = compute_metrics(c, c[:, :1])
    for name, v in vals.items():
        assert not np.isnan(v).any(), name
        if name != "psnr":
            assert np.isfinite(v).all(), name
    assert math.isinf(vals["psnr"][0, 0])


def test_compute_metrics_on_diffshapes_if_available():
    diffshapes = pytest.importorskip("denoisefeat.toy.diffshapes")
    b = diffshapes.generate(3, seed=0, size=32)
    final = b.images.astype(np.float64)[:, None]
    blurred = np.stack(
        [final[:, 0] * 0 + final[:, 0].mean(axis=(-2, -1), keepdims=True), final[:, 0]], axis=1
    )
    vals = compute_metrics(blurred, final, masks=b.mask[:, None], edges=b.edges[:, None])
    assert vals["ssim"].shape == (3, 2)
    assert np.all(vals["edge_f1"][:, 1] == 1.0) and np.all(vals["edge_density"][:, 0] == 0.0)
    assert np.all(vals["edge_recall_gt"][:, 1] > 0.5)
    assert np.all(vals["mask_iou"][:, 1] == 1.0)


@pytest.mark.parametrize(
    "func",
    [
        M.edge_density,
        M.edge_sharpness,
        M.glcm_features,
        M.mean_lab,
        M.colorfulness,
        compute_metrics,
    ],
)
def test_unit_range_metrics_reject_other_scales(func):
    x = RNG.random((1, 3, 16, 16))
    func(x)  # fine in [0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        func(x * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        func(2 * x - 1)


def test_scale_free_metrics_accept_other_scales():
    x = RNG.random((2, 3, 16, 16))
    y = RNG.random((2, 3, 16, 16))
    np.testing.assert_allclose(M.mask_iou(255 * x, 255 * y), M.mask_iou(x, y))
    np.testing.assert_allclose(
        M.ssim(255 * x, 255 * y, data_range=255), M.ssim(x, y, data_range=1), atol=1e-12
    )
