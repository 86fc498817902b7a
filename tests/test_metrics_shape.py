"""Tests of denoisefeat.metrics.shape: foreground masks, IoU, Hu moments, low-pass SSIM."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.color import rgb2gray
from skimage.filters import threshold_otsu
from skimage.measure import moments_central, moments_hu, moments_normalized

from denoisefeat.metrics import (
    foreground_mask,
    hu_moment_distance,
    hu_moments,
    lowpass_ssim,
    mask_iou,
    mask_iou_ground_truth,
    ssim,
)

RNG = np.random.default_rng(3)


def disk(n=32, cy=16.0, cx=15.0, r=7.0):
    yy, xx = np.mgrid[0:n, 0:n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def rgb_object(mask, fg=(0.9, 0.2, 0.1), bg=(0.2, 0.25, 0.3)):
    fg, bg = np.asarray(fg)[:, None, None], np.asarray(bg)[:, None, None]
    return np.where(mask[None], fg, bg)


def test_foreground_mask_matches_otsu_and_polarity():
    m = disk()
    bright = rgb_object(m)
    dark = rgb_object(m, fg=(0.05, 0.05, 0.1), bg=(0.8, 0.8, 0.7))
    np.testing.assert_array_equal(foreground_mask(bright), m)
    np.testing.assert_array_equal(
        foreground_mask(dark), m
    )  # auto polarity: the object does not touch the border
    np.testing.assert_array_equal(foreground_mask(dark, polarity="bright"), ~m)
    x = RNG.random((4, 3, 16, 16)) ** 2
    lum = rgb2gray(np.moveaxis(x, 1, -1))
    got = foreground_mask(x, polarity="bright")
    for i in range(4):
        np.testing.assert_array_equal(got[i], lum[i] > threshold_otsu(lum[i]))
    assert not foreground_mask(np.full((3, 16, 16), 0.5)).any()
    li = foreground_mask(bright, method="li")
    np.testing.assert_array_equal(li, m)
    with pytest.raises(ValueError, match="method"):
        foreground_mask(bright, method="nope")


def test_mask_iou_analytic_and_edge_cases():
    a = disk(cx=12.0)
    b = disk(cx=18.0)
    iou = mask_iou(rgb_object(a)[None], rgb_object(b)[None])[0]
    assert iou == pytest.approx((a & b).sum() / (a | b).sum())
    assert mask_iou(rgb_object(a), rgb_object(a)) == 1.0
    c = np.full((3, 32, 32), 0.4)
    assert mask_iou(c, c) == 1.0  # two empty masks
    assert mask_iou(c, rgb_object(a)) == 0.0
    assert mask_iou(rgb_object(a), c) == 0.0
    with pytest.raises(ValueError, match="mask_iou"):
        mask_iou(np.full((3, 8, 8), np.nan), c[:, :8, :8])


def test_mask_iou_uses_reference_polarity_and_broadcasts():
    m = disk()
    ref = rgb_object(m)[None, None]  # bright object
    steps = np.stack([rgb_object(m, fg=(0.5, 0.5, 0.5), bg=(0.45, 0.45, 0.45)), rgb_object(m)])[
        None
    ]
    got = mask_iou(steps, ref)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, 1.0)
    loop = [mask_iou(steps[0, t], ref[0, 0]) for t in range(2)]
    np.testing.assert_allclose(got[0], loop)


def test_mask_iou_ground_truth():
    m = disk()
    imgs = np.stack([rgb_object(m), rgb_object(m, fg=(0.1, 0.1, 0.1), bg=(0.9, 0.9, 0.9))])
    np.testing.assert_allclose(mask_iou_ground_truth(imgs, m), 1.0)
    np.testing.assert_allclose(
        mask_iou_ground_truth(imgs, m.astype(np.float32) * 0.9), 1.0
    )  # coverage maps
    shifted = disk(cx=19.0)
    np.testing.assert_allclose(
        mask_iou_ground_truth(imgs, shifted), (m & shifted).sum() / (m | shifted).sum()
    )
    c = np.full((1, 3, 32, 32), 0.5)
    assert mask_iou_ground_truth(c, np.zeros((32, 32), bool))[0] == 1.0
    assert mask_iou_ground_truth(c, m)[0] == 0.0


def test_diffshapes_masks_if_available():
    diffshapes = pytest.importorskip("denoisefeat.toy.diffshapes")
    b = diffshapes.generate(6, seed=1, size=32, textures=["solid"])
    iou = mask_iou_ground_truth(b.images, b.mask)
    assert iou.shape == (6,) and np.median(iou) > 0.8


def test_hu_moments_match_skimage_and_invariances():
    m = np.zeros((32, 32), bool)
    m[8:14, 6:24] = True
    m[14:22, 6:10] = True  # an L shape
    img = rgb_object(m)
    hu = hu_moments(img)
    want = moments_hu(moments_normalized(moments_central(m.astype(float), order=3), order=3))
    np.testing.assert_allclose(hu, want, rtol=1e-9, atol=1e-15)
    rotated = rgb_object(np.rot90(m).copy())
    translated = rgb_object(np.roll(m, (5, 3), axis=(0, 1)))
    assert hu_moment_distance(img, img) == 0.0
    assert hu_moment_distance(rotated, img) == pytest.approx(0.0, abs=1e-6)
    assert hu_moment_distance(translated, img) == pytest.approx(0.0, abs=1e-6)
    d_disk = hu_moment_distance(rgb_object(disk()), img)
    assert d_disk > 1.0
    assert hu_moment_distance(img, rgb_object(disk())) == pytest.approx(d_disk)


def test_hu_moment_distance_constant_and_broadcast():
    c = np.full((3, 32, 32), 0.5)
    obj = rgb_object(disk())
    assert hu_moment_distance(c, c) == 0.0
    d = hu_moment_distance(c, obj)
    assert np.isfinite(d) and d > 0
    np.testing.assert_array_equal(hu_moments(c), np.zeros(7))
    x = np.stack([obj, c, np.roll(obj, 3, axis=-1)])[None]  # (1, 3, 3, H, W)
    got = hu_moment_distance(x, obj[None, None])
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got[0], [hu_moment_distance(x[0, t], obj) for t in range(3)])


def test_lowpass_ssim():
    from denoisefeat.frequency import band_pass

    x = RNG.random((2, 2, 3, 24, 24))
    ref = RNG.random((2, 1, 3, 24, 24))
    got = lowpass_ssim(x, ref, data_range=1.0, cutoff=0.1)
    bands = {"low": (0.0, 0.1), "rest": (0.1, np.inf)}
    want = ssim(
        band_pass(x, bands=bands)[..., 0, :, :],
        band_pass(ref, bands=bands)[..., 0, :, :],
        data_range=1.0,
    )
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(lowpass_ssim(x, x, data_range=1.0), 1.0, atol=1e-12)
    # Low-pass SSIM ignores fine detail: adding high-frequency noise barely changes it.
    obj = rgb_object(disk())
    noisy = np.clip(obj + 0.1 * RNG.standard_normal(obj.shape), 0, 1)
    assert lowpass_ssim(noisy, obj, data_range=1.0) > ssim(noisy, obj, data_range=1.0) + 0.3
    c = np.full((3, 16, 16), 0.5)
    assert lowpass_ssim(c, c, data_range=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lowpass_ssim"):
        lowpass_ssim(c * np.nan, c, data_range=1.0)


@settings(max_examples=15, deadline=None)
@given(
    x=arrays(np.float64, (2, 1, 16, 16), elements=st.floats(0, 1, width=32)),
    y=arrays(np.float64, (2, 1, 16, 16), elements=st.floats(0, 1, width=32)),
)
def test_shape_properties(x, y):
    np.testing.assert_array_equal(mask_iou(x, x), 1.0)
    np.testing.assert_array_equal(hu_moment_distance(x, x), 0.0)
    iou = mask_iou(x, y)
    assert np.all((iou >= 0) & (iou <= 1))
    np.testing.assert_allclose(iou, [mask_iou(x[i], y[i]) for i in range(2)])
    d = hu_moment_distance(x, y)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
