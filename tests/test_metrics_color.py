"""Tests of denoisefeat.metrics.color: CIELAB, CIEDE2000, hue, colourfulness, consistency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.color import deltaE_ciede2000, rgb2lab

from denoisefeat.metrics import (
    color_consistency,
    color_spread,
    colorfulness,
    delta_e2000,
    hue_histogram,
    hue_histogram_distance,
    mean_lab,
)

RNG = np.random.default_rng(5)


def uniform(rgb, n=16):
    return np.broadcast_to(np.asarray(rgb, dtype=float)[:, None, None], (3, n, n)).copy()


def disk(n=24, r=7.0):
    yy, xx = np.mgrid[0:n, 0:n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < r**2


def test_mean_lab_matches_skimage_and_uniform_colour():
    x = RNG.random((2, 3, 3, 12, 12))
    got = mean_lab(x)
    assert got.shape == (2, 3, 3)
    np.testing.assert_allclose(
        got[1, 2], rgb2lab(np.moveaxis(x[1, 2], 0, -1)).mean(axis=(0, 1)), atol=1e-10
    )
    red = mean_lab(uniform((1.0, 0.0, 0.0)))
    np.testing.assert_allclose(red, rgb2lab(np.array([[[1.0, 0.0, 0.0]]]))[0, 0], atol=1e-10)
    np.testing.assert_allclose(mean_lab(np.moveaxis(x, -3, -1), channel_axis=-1), got)
    with pytest.raises(ValueError, match="channels"):
        mean_lab(RNG.random((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="mean_lab"):
        mean_lab(np.full((3, 8, 8), np.nan))


def test_delta_e2000_matches_skimage_and_broadcasts():
    x = RNG.random((2, 3, 3, 12, 12))
    ref = RNG.random((2, 1, 3, 12, 12))
    got = delta_e2000(x, ref)
    assert got.shape == (2, 3)
    for s, t in np.ndindex(2, 3):
        want = deltaE_ciede2000(
            rgb2lab(np.moveaxis(x[s, t], 0, -1)), rgb2lab(np.moveaxis(ref[s, 0], 0, -1))
        ).mean()
        assert got[s, t] == pytest.approx(want, abs=1e-9)
    np.testing.assert_array_equal(delta_e2000(x, x), 0.0)
    np.testing.assert_allclose(delta_e2000(ref, x), got, atol=1e-9)
    grey = uniform((0.5, 0.5, 0.5))
    assert delta_e2000(grey, grey) == 0.0
    with pytest.raises(ValueError, match="delta_e2000"):
        delta_e2000(grey * np.nan, grey)


def test_hue_histogram_distance_cases():
    red, green, cyan = uniform((1, 0, 0)), uniform((0, 1, 0)), uniform((0, 1, 1))
    grey = uniform((0.5, 0.5, 0.5))
    assert hue_histogram_distance(red, red) == 0.0
    assert hue_histogram_distance(red, cyan) == pytest.approx(180.0, abs=0.5)
    assert hue_histogram_distance(red, green) == pytest.approx(120.0, abs=0.5)
    assert hue_histogram_distance(green, red) == pytest.approx(hue_histogram_distance(red, green))
    assert hue_histogram_distance(red, grey) == pytest.approx(90.0, abs=1.0)
    assert hue_histogram_distance(grey, grey * 0.5) == 0.0
    # The distance respects the wrap-around at 0/360 degrees: 350 vs 10 degrees is 20.
    magenta_red = uniform((1.0, 0.0, 1.0 / 6.0 * 0.999))  # hue just below 360
    orange_red = uniform((1.0, 1.0 / 6.0 * 0.999, 0.0))  # hue just above 0
    assert hue_histogram_distance(magenta_red, orange_red) <= 20.0
    h = hue_histogram(RNG.random((2, 3, 8, 8)), bins=12)
    assert h.shape == (2, 12)
    np.testing.assert_allclose(h.sum(-1), 1.0)
    with pytest.raises(ValueError, match="hue_histogram_distance"):
        hue_histogram_distance(red * np.nan, red)


def test_colorfulness_hand_computed():
    im = np.zeros((3, 8, 8))
    im[0, :, :4] = 1.0  # left half red
    im[2, :, 4:] = 1.0  # right half blue
    # rg: 255 | 0 -> mean 127.5, std 127.5; yb: 127.5 | -255 -> mean -63.75, std 191.25
    want = np.hypot(127.5, 191.25) + 0.3 * np.hypot(127.5, 63.75)
    assert colorfulness(im) == pytest.approx(want)  # 272.6187...
    assert colorfulness(uniform((0.3, 0.3, 0.3))) == 0.0
    red = colorfulness(uniform((1, 0, 0)))
    assert red == pytest.approx(0.3 * np.hypot(255, 127.5))
    x = RNG.random((2, 3, 3, 8, 8))
    np.testing.assert_allclose(colorfulness(x)[1, 2], colorfulness(x[1, 2]))


def test_color_consistency_uniform_object_is_ideal_and_noise_moves_it_away():
    m = disk()
    obj = np.where(m[None], np.array([0.8, 0.2, 0.1])[:, None, None], 0.3)
    assert color_consistency(obj, obj) == 0.0
    # a uniformly coloured object of another colour is as consistent as the reference
    other = np.where(m[None], np.array([0.1, 0.3, 0.9])[:, None, None], 0.3)
    assert color_consistency(other, obj) == pytest.approx(0.0, abs=1e-9)
    noise = RNG.standard_normal(obj.shape)
    steps = np.stack([np.clip(obj + s * noise * m, 0, 1) for s in (0.0, 0.02, 0.05, 0.1, 0.2)])
    v = color_consistency(steps, obj[None])
    assert v[0] == 0.0 and np.all(np.diff(v) > 0), v
    # explicit mask, broadcast over the steps
    np.testing.assert_allclose(color_consistency(steps, obj[None], mask=m), v, atol=1e-9)
    c = uniform((0.4, 0.4, 0.4))
    assert color_consistency(c, c) == 0.0
    with pytest.raises(ValueError, match="color_consistency"):
        color_consistency(c * np.nan, c)


def test_color_spread():
    m = disk()
    obj = np.where(m[None], np.array([0.8, 0.2, 0.1])[:, None, None], 0.3)
    assert color_spread(obj, mask=m) == pytest.approx(0.0, abs=1e-9)
    assert color_spread(obj) > 10  # object and background
    assert color_spread(obj, mask=np.zeros_like(m)) == pytest.approx(
        color_spread(obj)
    )  # empty mask = whole image


@settings(max_examples=15, deadline=None)
@given(
    x=arrays(np.float64, (2, 3, 8, 8), elements=st.floats(0, 1, width=32)),
    y=arrays(np.float64, (2, 3, 8, 8), elements=st.floats(0, 1, width=32)),
)
def test_color_properties(x, y):
    np.testing.assert_array_equal(delta_e2000(x, x), 0.0)
    np.testing.assert_array_equal(hue_histogram_distance(x, x), 0.0)
    np.testing.assert_allclose(color_consistency(x, x), 0.0, atol=1e-9)
    d = hue_histogram_distance(x, y)
    np.testing.assert_allclose(d, hue_histogram_distance(y, x), atol=1e-9)
    assert np.all((d >= 0) & (d <= 180 + 1e-9))
    np.testing.assert_allclose(delta_e2000(x, y), [delta_e2000(x[i], y[i]) for i in range(2)])
    assert np.all(colorfulness(x) >= 0)
