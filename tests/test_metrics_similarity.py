"""Tests of denoisefeat.metrics.similarity: SSIM, MS-SSIM, PSNR, band SSIM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from denoisefeat.metrics import MS_SSIM_WEIGHTS, band_ssim, ms_ssim, psnr, ssim

RNG = np.random.default_rng(20240601)


def _smooth_random(rng, shape):
    """Random images with structure at several scales (not only white noise)."""
    from scipy import ndimage as ndi

    noise = rng.random(shape)
    smooth = ndi.gaussian_filter(rng.random(shape), sigma=(0,) * (len(shape) - 2) + (2, 2))
    return np.clip(0.5 * noise + smooth * rng.uniform(0.2, 1.5), 0, 1)


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("gaussian_weights", [False, True])
@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_skimage_many_pairs(gaussian_weights, channels):
    for trial in range(6):
        H, W = RNG.integers(12, 33, size=2)
        x = _smooth_random(RNG, (4, channels, H, W))
        y = (
            np.clip(x + RNG.normal(0, RNG.uniform(0.01, 0.4), x.shape), 0, 1)
            if trial % 2
            else _smooth_random(RNG, (4, channels, H, W))
        )
        got = ssim(x, y, data_range=1.0, gaussian_weights=gaussian_weights)
        want = [
            structural_similarity(
                x[i], y[i], data_range=1.0, channel_axis=0, gaussian_weights=gaussian_weights
            )
            for i in range(4)
        ]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("win_size", [3, 5, 7, 9])
def test_ssim_matches_skimage_window_sizes(win_size):
    x, y = RNG.random((2, 3, 20, 18))
    for g in (False, True):
        got = ssim(x[None], y[None], data_range=1.0, win_size=win_size, gaussian_weights=g)[0]
        want = structural_similarity(
            x, y, data_range=1.0, channel_axis=0, win_size=win_size, gaussian_weights=g
        )
        assert abs(got - want) < 1e-6


def test_ssim_matches_skimage_large_images_ndimage_path():
    # Large images (140 px) run through scipy.ndimage filters instead of matrices.
    x, y = RNG.random((2, 1, 140, 132))
    for g in (False, True):
        got = ssim(x, y, data_range=1.0, gaussian_weights=g)
        want = structural_similarity(x[0], y[0], data_range=1.0, gaussian_weights=g)
        assert abs(got - want) < 1e-6


def test_ssim_data_range_scales():
    x, y = RNG.random((2, 3, 16, 16)) * 255
    got = ssim(x, y, data_range=255.0)
    want = structural_similarity(x, y, data_range=255.0, channel_axis=0)
    assert abs(got - want) < 1e-6
    np.testing.assert_allclose(got, ssim(x / 255, y / 255, data_range=1.0), atol=1e-12)


def test_ssim_broadcasts_reference_and_matches_loop():
    S, T = 3, 4
    x = RNG.random((S, T, 3, 16, 16))
    ref = RNG.random((S, 1, 3, 16, 16))
    got = ssim(x, ref, data_range=1.0)
    assert got.shape == (S, T) and got.dtype == np.float64
    loop = np.array(
        [[ssim(x[s, t], ref[s, 0], data_range=1.0) for t in range(T)] for s in range(S)]
    )
    np.testing.assert_allclose(got, loop, atol=1e-12)


def test_ssim_channel_axis_options():
    x, y = RNG.random((2, 2, 3, 16, 16))
    base = ssim(x, y, data_range=1.0)
    np.testing.assert_allclose(
        ssim(np.moveaxis(x, -3, -1), np.moveaxis(y, -3, -1), data_range=1, channel_axis=-1), base
    )
    grey = ssim(x[:, 0], y[:, 0], data_range=1.0, channel_axis=None)
    np.testing.assert_allclose(grey, ssim(x[:, :1], y[:, :1], data_range=1.0))


def test_ssim_constant_images():
    a = np.full((1, 3, 16, 16), 0.3)
    b = np.full((1, 3, 16, 16), 0.6)
    assert ssim(a, a, data_range=1.0)[0] == pytest.approx(1.0)
    c1 = 0.01**2
    lum = (2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1)
    assert ssim(a, b, data_range=1.0)[0] == pytest.approx(lum)
    assert np.isfinite(ssim(a, RNG.random(a.shape), data_range=1.0)).all()


def test_ssim_errors():
    x = RNG.random((2, 3, 16, 16))
    bad = x.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="ssim"):
        ssim(bad, x, data_range=1.0)
    with pytest.raises(ValueError, match="ssim"):
        ssim(x, bad, data_range=1.0)
    with pytest.raises(TypeError):
        ssim(x, x)  # data_range is required
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, data_range=0)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x[..., :5, :5], x[..., :5, :5], data_range=1.0)
    with pytest.raises(ValueError, match="differ"):
        ssim(x, x[..., :8], data_range=1.0)
    with pytest.raises(ValueError, match="broadcast"):
        ssim(x, RNG.random((3, 3, 16, 16)), data_range=1.0)
    with pytest.raises(ValueError, match="channels"):
        ssim(RNG.random((2, 16, 16)), RNG.random((2, 16, 16)), data_range=1.0)


images_pair = arrays(np.float64, (2, 3, 12, 12), elements=st.floats(0, 1, width=32))


@settings(max_examples=20, deadline=None)
@given(x=images_pair, y=images_pair)
def test_ssim_properties(x, y):
    np.testing.assert_allclose(ssim(x, x, data_range=1.0), 1.0, atol=1e-12)
    s_xy = ssim(x, y, data_range=1.0)
    np.testing.assert_allclose(s_xy, ssim(y, x, data_range=1.0), atol=1e-12)
    assert np.all((s_xy >= -1 - 1e-12) & (s_xy <= 1 + 1e-12))
    loop = [ssim(x[i], y[i], data_range=1.0) for i in range(2)]
    np.testing.assert_allclose(s_xy, loop, atol=1e-12)


# --------------------------------------------------------------------------- PSNR


def test_psnr_matches_skimage_and_identical_is_inf():
    x = RNG.random((3, 2, 3, 16, 16))
    ref = RNG.random((3, 1, 3, 16, 16))
    got = psnr(x, ref, data_range=1.0)
    want = [
        [peak_signal_noise_ratio(ref[s, 0], x[s, t], data_range=1.0) for t in range(2)]
        for s in range(3)
    ]
    np.testing.assert_allclose(got, want, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = psnr(x, x, data_range=1.0)
    assert np.all(np.isposinf(same))
    a, b = np.full((1, 16, 16), 0.2), np.full((1, 16, 16), 0.7)
    assert psnr(a, b, data_range=1.0) == pytest.approx(10 * np.log10(1 / 0.25))
    np.testing.assert_allclose(psnr(x, ref, data_range=1.0), psnr(ref, x, data_range=1.0))
    with pytest.raises(ValueError, match="psnr"):
        psnr(np.full((3, 8, 8), np.nan), a[None].repeat(3, 0)[:, 0][:, :8, :8], data_range=1.0)


# --------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_identical_range_and_symmetry():
    x, y = _smooth_random(RNG, (2, 2, 3, 32, 32))
    np.testing.assert_allclose(ms_ssim(x, x, data_range=1.0), 1.0, atol=1e-12)
    v = ms_ssim(x, y, data_range=1.0)
    assert v.shape == (2,) and np.all((v >= 0) & (v <= 1))
    np.testing.assert_allclose(v, ms_ssim(y, x, data_range=1.0), atol=1e-12)


def test_ms_ssim_scales_for_small_images():
    x, y = _smooth_random(RNG, (2, 2, 3, 32, 32))
    # 32 px with the 11-tap window: two scales (32, 16), weights renormalised.
    np.testing.assert_allclose(
        ms_ssim(x, y, data_range=1.0),
        ms_ssim(x, y, data_range=1.0, weights=MS_SSIM_WEIGHTS[:2]),
        atol=1e-12,
    )
    # One scale is the (Gaussian) SSIM, clipped at 0 and averaged per channel.
    one = ms_ssim(x, y, data_range=1.0, weights=(1.0,))
    per_channel = np.stack(
        [
            ssim(x[:, c], y[:, c], data_range=1.0, gaussian_weights=True, channel_axis=None)
            for c in range(3)
        ]
    )
    np.testing.assert_allclose(one, np.clip(per_channel, 0, None).mean(axis=0), atol=1e-12)
    # 16 px: a single scale.
    np.testing.assert_allclose(
        ms_ssim(x[..., :16, :16], y[..., :16, :16], data_range=1.0),
        ms_ssim(x[..., :16, :16], y[..., :16, :16], data_range=1.0, weights=(1.0,)),
    )
    with pytest.raises(ValueError, match="win_size"):
        ms_ssim(x[..., :10, :10], y[..., :10, :10], data_range=1.0)


def test_ms_ssim_constant_and_nan():
    a, b = np.full((2, 3, 32, 32), 0.25), np.full((2, 3, 32, 32), 0.75)
    assert np.allclose(ms_ssim(a, a, data_range=1.0), 1.0)
    v = ms_ssim(a, b, data_range=1.0)
    assert np.all(np.isfinite(v)) and np.all((v >= 0) & (v < 1))
    bad = a.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="ms_ssim"):
        ms_ssim(bad, a, data_range=1.0)


# --------------------------------------------------------------------------- band SSIM


def test_band_ssim_matches_ssim_of_band_pass_images():
    from denoisefeat.frequency import DEFAULT_BANDS, band_pass

    x = _smooth_random(RNG, (2, 3, 3, 24, 24))
    ref = _smooth_random(RNG, (2, 1, 3, 24, 24))
    got = band_ssim(x, ref, data_range=1.0)
    assert got.shape == (2, 3, len(DEFAULT_BANDS))
    bx, br = band_pass(x), band_pass(ref)  # (..., C, n_bands, H, W)
    for i in range(len(DEFAULT_BANDS)):
        want = ssim(bx[..., i, :, :], br[..., i, :, :], data_range=1.0)
        np.testing.assert_allclose(got[..., i], want, atol=1e-12)
    np.testing.assert_allclose(band_ssim(x, x, data_range=1.0), 1.0, atol=1e-12)
    two = band_ssim(x, ref, data_range=1.0, bands={"low": (0, 0.1), "high": (0.1, np.inf)})
    assert two.shape == (2, 3, 2)


def test_band_ssim_constant_and_nan():
    a, b = np.full((1, 3, 16, 16), 0.2), np.full((1, 3, 16, 16), 0.9)
    v = band_ssim(a, b, data_range=1.0)
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(v[..., 1:], 1.0)  # empty mid and high bands agree
    with pytest.raises(ValueError, match="band_ssim"):
        band_ssim(np.where(a > 0, np.nan, a), b, data_range=1.0)
