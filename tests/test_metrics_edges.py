"""Tests of denoisefeat.metrics.edges: edge maps, density, sharpness, width, precision/recall."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi
from skimage.color import rgb2gray
from skimage.feature import canny
from skimage.filters import apply_hysteresis_threshold, gaussian, sobel

from denoisefeat.metrics import edge_density, edge_map, edge_prf, edge_sharpness, edge_width_10_90

RNG = np.random.default_rng(7)


def step_edge(n=32, *, contrast=0.5, base=0.25, angle=0.3, offset=0.37, ss=8):
    """Anti-aliased straight step edge (exact pixel coverage by supersampling)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    o = (np.arange(ss) + 0.5) / ss - 0.5
    cover = np.zeros((n, n))
    for dy in o:
        for dx in o:
            cover += (
                (xx + dx - n / 2) * np.cos(angle) + (yy + dy - n / 2) * np.sin(angle)
            ) > offset
    return base + contrast * cover / ss**2


def blurred_series(img, sigmas=(1, 2, 3)):
    return np.stack([img] + [ndi.gaussian_filter(img, s, mode="nearest") for s in sigmas])


def test_edge_map_matches_skimage_canny_and_sobel():
    x = np.clip(ndi.gaussian_filter(RNG.random((3, 3, 24, 24)), (0, 0, 1.5, 1.5)) * 3 - 1, 0, 1)
    lum = rgb2gray(np.moveaxis(x, 1, -1))
    got = edge_map(x)
    assert got.shape == (3, 24, 24) and got.dtype == bool
    for i in range(3):
        np.testing.assert_array_equal(got[i], canny(lum[i], sigma=1.0))
    got = edge_map(x, sigma=2.0, low_threshold=0.05, high_threshold=0.3)
    for i in range(3):
        np.testing.assert_array_equal(
            got[i], canny(lum[i], sigma=2.0, low_threshold=0.05, high_threshold=0.3)
        )
    got = edge_map(x, method="sobel")
    for i in range(3):
        mag = sobel(gaussian(lum[i], sigma=1.0, mode="nearest", preserve_range=True))
        scale = 8 * np.sqrt(2)
        np.testing.assert_array_equal(
            got[i], apply_hysteresis_threshold(mag, 0.1 / scale, 0.2 / scale)
        )
    with pytest.raises(ValueError, match="method"):
        edge_map(x, method="prewitt")


def test_edge_density_step_and_constant():
    img = step_edge(angle=0.0, offset=0.0)[None]  # vertical edge, one pixel column of edges
    d = edge_density(img[None])
    assert d.shape == (1,)
    # canny marks one edge pixel per row, minus the outer ring
    assert d[0] == pytest.approx((32 - 2) / 32**2, abs=2 / 32**2)
    assert edge_density(np.full((2, 3, 16, 16), 0.4)).tolist() == [0.0, 0.0]
    assert edge_density(np.full((2, 3, 16, 16), 0.4), method="sobel").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="edge_map"):
        edge_density(np.full((1, 3, 16, 16), np.nan))


@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 4])
def test_edge_sharpness_decreases_with_blur_and_ignores_contrast(angle):
    img = step_edge(48, contrast=0.5, angle=angle)
    series = blurred_series(img)[:, None]
    s = edge_sharpness(series)
    assert s[0] > 0.95  # an ideal anti-aliased step reads about 1
    assert np.all(np.diff(s) < 0), s
    # doubling the contrast leaves the sharpness unchanged (within 1%)
    img2 = step_edge(48, contrast=1.0, base=0.0, angle=angle)
    s2 = edge_sharpness(blurred_series(img2)[:, None])
    np.testing.assert_allclose(s2, s, rtol=0.01)
    assert np.all((s >= 0) & (s <= 1))


def test_edge_width_increases_with_blur():
    img = step_edge(48, angle=0.2)
    w = edge_width_10_90(blurred_series(img)[:, None])
    assert np.all(np.diff(w) > 0), w
    assert 0.5 <= w[0] <= 1.7
    assert w[1] == pytest.approx(2.56, abs=0.5)  # 2.56 sigma for a Gaussian-blurred step


def test_edge_sharpness_and_width_constant_and_nan():
    c = np.full((2, 3, 16, 16), 0.5)
    assert edge_sharpness(c).tolist() == [0.0, 0.0]
    assert edge_width_10_90(c, radius=4).tolist() == [8.0, 8.0]
    bad = c.copy()
    bad[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="edge_sharpness"):
        edge_sharpness(bad)
    with pytest.raises(ValueError, match="edge_width_10_90"):
        edge_width_10_90(bad)


def test_edge_sharpness_with_given_edges_broadcasts():
    img = blurred_series(step_edge(32, angle=0.0, offset=0.0))[:, None]  # (4, 1, H, W)
    edges = edge_map(img[:1])  # the crisp image's edges, (1, H, W)
    s = edge_sharpness(img, edges=edges)
    assert s.shape == (4,)
    assert np.all(np.diff(s) < 0)


def test_edge_prf_cases():
    img = step_edge(32, angle=0.0, offset=0.0)[None, None]  # (1, 1, H, W)
    e = edge_map(img)
    np.testing.assert_allclose(edge_prf(img, e), [[1.0, 1.0, 1.0]])
    shifted = np.roll(e, 1, axis=-1)
    np.testing.assert_allclose(edge_prf(img, shifted, tolerance=1), [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(edge_prf(img, shifted, tolerance=0), [[0.0, 0.0, 0.0]])
    empty = np.zeros_like(e)
    const = np.full((1, 1, 32, 32), 0.5)
    np.testing.assert_allclose(edge_prf(const, empty), [[1.0, 1.0, 1.0]])  # both empty
    np.testing.assert_allclose(edge_prf(const, e), [[0.0, 0.0, 0.0]])  # no image edges
    np.testing.assert_allclose(edge_prf(img, empty), [[0.0, 0.0, 0.0]])  # no reference edges
    half = e.copy()
    half[..., 16:, :] = False  # reference has the top half of the edge only
    p, r, f = edge_prf(img, half, tolerance=0)[0]
    assert r == 1.0 and 0.4 < p < 0.6 and f == pytest.approx(2 * p * r / (p + r))


def test_edge_prf_broadcasts_reference_edges_and_matches_loop():
    S, T = 2, 3
    x = np.clip(
        ndi.gaussian_filter(RNG.random((S, T, 3, 20, 20)), (0, 0, 0, 1.2, 1.2)) * 3 - 1, 0, 1
    )
    ref_edges = edge_map(x[:, -1:])  # (S, 1, H, W)
    got = edge_prf(x, ref_edges)
    assert got.shape == (S, T, 3)
    loop = np.array([[edge_prf(x[s, t], ref_edges[s, 0]) for t in range(T)] for s in range(S)])
    np.testing.assert_allclose(got, loop)
    np.testing.assert_allclose(got[:, -1], 1.0)


@settings(max_examples=15, deadline=None)
@given(x=arrays(np.float64, (2, 1, 16, 16), elements=st.floats(0, 1, width=32)))
def test_edge_properties(x):
    e = edge_map(x)
    np.testing.assert_allclose(edge_prf(x, e), 1.0)
    d = edge_density(x)
    np.testing.assert_allclose(d, [edge_density(x[i]) for i in range(2)])
    s = edge_sharpness(x)
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.isfinite(s))
    w = edge_width_10_90(x)
    assert np.all((w >= 0) & (w <= 8))
