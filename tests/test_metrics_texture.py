"""Tests of denoisefeat.metrics.texture: GLCM statistics, LBP, mid-band wavelet energy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.color import rgb2gray
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from denoisefeat.metrics import (
    GLCM_PROPERTIES,
    glcm_features,
    lbp_distance,
    lbp_histogram,
    wavelet_texture_energy,
)

RNG = np.random.default_rng(11)
ANGLES = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def stripes(n=32, period=8.0, angle=0.0, amplitude=0.4):
    yy, xx = np.mgrid[0:n, 0:n]
    return 0.5 + amplitude * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)


def test_glcm_matches_skimage():
    x = RNG.random((2, 2, 3, 16, 20))
    got = glcm_features(x)
    assert got.shape == (2, 2, 4) and got.dtype == np.float64
    lum = rgb2gray(np.moveaxis(x, -3, -1))
    for idx in np.ndindex(2, 2):
        q = np.minimum(np.floor(lum[idx] * 32), 31).astype(np.uint8)
        P = graycomatrix(q, [1], ANGLES, levels=32, symmetric=True, normed=True)
        want = [graycoprops(P, p).mean() for p in GLCM_PROPERTIES]
        np.testing.assert_allclose(got[idx], want, rtol=1e-10, atol=1e-12)
    got = glcm_features(x[0, 0, :1], distances=(1, 2), angles=(0.0,), levels=8)
    q = np.minimum(np.floor(x[0, 0, 0] * 8), 7).astype(np.uint8)
    P = graycomatrix(q, [1, 2], [0.0], levels=8, symmetric=True, normed=True)
    np.testing.assert_allclose(got, [graycoprops(P, p).mean() for p in GLCM_PROPERTIES], rtol=1e-10)


def test_glcm_constant_and_stripes():
    c = glcm_features(np.full((3, 1, 16, 16), 0.7))
    np.testing.assert_array_equal(c, np.tile([0.0, 1.0, 1.0, 1.0], (3, 1)))
    # Finer stripes: more contrast between neighbours, less homogeneity.
    f = glcm_features(np.stack([stripes(period=p) for p in (16, 8, 4)])[:, None])
    assert np.all(np.diff(f[:, 0]) > 0) and np.all(np.diff(f[:, 1]) < 0)
    assert np.all((f[:, 1:3] >= 0) & (f[:, 1:3] <= 1)) and np.all(np.abs(f[:, 3]) <= 1)
    with pytest.raises(ValueError, match="glcm_features"):
        glcm_features(np.full((1, 1, 8, 8), np.nan))


def test_lbp_histogram_matches_skimage():
    x = RNG.random((3, 1, 16, 16))
    got = lbp_histogram(x, P=8, R=1)
    assert got.shape == (3, 10)
    for i in range(3):
        codes = local_binary_pattern(
            np.round(x[i, 0] * 255).astype(np.uint8), 8, 1, method="uniform"
        )
        codes = codes[1:-1, 1:-1]  # the border ring is left out
        np.testing.assert_allclose(
            got[i], np.bincount(codes.astype(int).ravel(), minlength=10) / 14**2
        )
    np.testing.assert_allclose(got.sum(-1), 1.0)
    const = lbp_histogram(np.full((1, 1, 8, 8), 0.3), P=8, R=1)
    assert const[0, 8] == 1.0


def test_lbp_distance_cases():
    a = stripes(period=4)[None, None]
    b = RNG.random((1, 1, 32, 32))
    assert lbp_distance(a, a)[0] == 0.0
    d = lbp_distance(a, b)[0]
    assert 0 < d <= 1
    assert lbp_distance(b, a)[0] == pytest.approx(d)
    c1, c2 = np.full((1, 1, 16, 16), 0.2), np.full((1, 1, 16, 16), 0.9)
    assert lbp_distance(c1, c2)[0] == 0.0
    with pytest.raises(ValueError, match="lbp_distance"):
        lbp_distance(np.full((1, 1, 8, 8), np.nan), c1[..., :8, :8])


def test_lbp_distance_broadcasts_reference():
    x = RNG.random((2, 3, 3, 16, 16))
    ref = RNG.random((2, 1, 3, 16, 16))
    got = lbp_distance(x, ref)
    loop = [[lbp_distance(x[s, t], ref[s, 0]) for t in range(3)] for s in range(2)]
    np.testing.assert_allclose(got, loop)


def test_wavelet_texture_energy():
    # A sinusoid with an 8 px period lies in levels 2-3 (1/16-1/4 cycles/pixel).
    mid = wavelet_texture_energy(stripes(period=8, angle=0.3), channel_axis=None)
    fine = wavelet_texture_energy(stripes(period=2.2), channel_axis=None)
    coarse = wavelet_texture_energy(stripes(period=32), channel_axis=None)
    assert mid.shape == ()
    assert mid > 0.85 and fine < 0.2 and coarse < 0.3
    x = RNG.random((2, 3, 32, 32))
    np.testing.assert_allclose(
        wavelet_texture_energy(x), wavelet_texture_energy(0.5 * x), atol=1e-12
    )
    assert wavelet_texture_energy(np.full((2, 3, 32, 32), 0.4)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="level"):
        wavelet_texture_energy(x[..., :16, :16])
    with pytest.raises(ValueError, match="wavelet_texture_energy"):
        wavelet_texture_energy(np.full((1, 1, 32, 32), np.nan))


@settings(max_examples=15, deadline=None)
@given(
    x=arrays(np.float64, (2, 1, 16, 16), elements=st.floats(0, 1, width=32)),
    y=arrays(np.float64, (2, 1, 16, 16), elements=st.floats(0, 1, width=32)),
)
def test_texture_properties(x, y):
    np.testing.assert_array_equal(lbp_distance(x, x), 0.0)
    d = lbp_distance(x, y)
    np.testing.assert_allclose(d, lbp_distance(y, x))
    assert np.all((d >= 0) & (d <= 1))
    g = glcm_features(x)
    np.testing.assert_allclose(g, np.stack([glcm_features(x[i]) for i in range(2)]))
    assert np.all(np.isfinite(g))
