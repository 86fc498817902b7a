"""Tests of the DiffShapes generator: determinism, geometry, textures, speed."""

import time

import numpy as np
import pytest
from scipy import ndimage

from denoisefeat.toy.diffshapes import (
    COLORS,
    NULL_LABEL,
    NUM_CONDITIONS,
    PALETTE,
    SHAPES,
    TEXTURES,
    condition_label,
    condition_names,
    generate,
    shape_area,
)


def test_constants():
    assert NUM_CONDITIONS == 120 and NULL_LABEL == 120
    assert COLORS == tuple(PALETTE) and len(COLORS) == 6
    assert len(SHAPES) == 5 and len(TEXTURES) == 4


def test_condition_label_round_trip():
    labels = [condition_label(s, c, t) for s in SHAPES for c in COLORS for t in TEXTURES]
    assert labels == list(range(NUM_CONDITIONS))  # shape-major
    for label in (0, 37, 119):
        assert condition_label(*condition_names(label)) == label


@pytest.mark.parametrize(
    "call, valid",
    [
        (lambda: condition_label("hexagon", "red", "solid"), "circle, square, triangle, star, cross"),
        (lambda: condition_label("circle", "pink", "solid"), "red, orange"),
        (lambda: generate(2, seed=0, textures=["plaid"]), "solid, stripes, checker, dots"),
    ],
)
def test_unknown_names_list_valid_ones(call, valid):
    with pytest.raises(ValueError, match=valid):
        call()


def test_invalid_labels_raise():
    with pytest.raises(ValueError):
        condition_names(NULL_LABEL)
    with pytest.raises(ValueError):
        generate(1, seed=0, labels=[NULL_LABEL])
    with pytest.raises(ValueError):
        generate(1, seed=0, labels=[3], shapes=["circle"])


def test_deterministic_and_batch_independent():
    small = generate(4, seed=7, n_objects=(1, 3))
    large = generate(400, seed=7, n_objects=(1, 3))
    again = generate(4, seed=7, n_objects=(1, 3))
    np.testing.assert_array_equal(small.images, large.images[:4])
    np.testing.assert_array_equal(small.mask, large.mask[:4])
    np.testing.assert_array_equal(small.label, large.label[:4])
    np.testing.assert_array_equal(small.images, again.images)
    assert not np.array_equal(small.images, generate(4, seed=8, n_objects=(1, 3)).images)


def test_batch_fields_and_ranges():
    batch = generate(64, seed=1, n_objects=(1, 3))
    assert batch.images.shape == (64, 3, 32, 32) and batch.images.dtype == np.float32
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.mask.shape == (64, 32, 32) and batch.mask.dtype == np.float32
    assert batch.binary_mask.dtype == bool and batch.edges.dtype == bool
    np.testing.assert_array_equal(batch.label, [condition_label(SHAPES[s], COLORS[c], TEXTURES[t])
                                                for s, c, t in zip(batch.shape, batch.color, batch.texture)])
    assert set(batch.objects.count) <= {1, 2, 3} and len(set(batch.objects.count)) > 1
    np.testing.assert_array_equal(batch.objects.shape[:, 0], batch.shape)
    assert np.all((batch.texture_frequency == 0) == (batch.texture == 0))
    np.testing.assert_allclose(batch.dominant_color, np.asarray([PALETTE[COLORS[c]] for c in batch.color]), rtol=1e-6)


def test_labels_fix_primary_object():
    labels = np.arange(0, NUM_CONDITIONS, 7)
    batch = generate(len(labels), seed=3, labels=labels)
    np.testing.assert_array_equal(batch.label, labels)


def test_restrictions():
    batch = generate(50, seed=2, shapes=["star"], colors=["blue", "red"], textures=["dots"])
    assert set(batch.shape) == {SHAPES.index("star")}
    assert set(batch.color) <= {COLORS.index("blue"), COLORS.index("red")}
    assert set(batch.texture) == {TEXTURES.index("dots")}


def test_primary_object_is_on_top_and_solid_colour_exact():
    batch = generate(20, seed=4, n_objects=3, textures=["solid"])
    inside = batch.mask >= 1.0  # full coverage: no anti-aliasing blend
    for i in range(len(batch)):
        pixels = batch.images[i][:, inside[i]]
        np.testing.assert_allclose(pixels, np.repeat(batch.dominant_color[i][:, None], pixels.shape[1], 1), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_area_matches_analytic_area(shape):
    batch = generate(40, seed=5, shapes=[shape], size=64)
    analytic = np.array([shape_area(shape, r) for r in batch.objects.radius[:, 0]])
    relative_error = batch.mask.sum(axis=(1, 2)) / analytic - 1
    assert np.abs(relative_error).max() < 0.02


def test_edges_lie_on_mask_boundary():
    batch = generate(100, seed=6)
    structure = np.ones((1, 3, 3), dtype=bool)
    band = ndimage.binary_dilation(batch.binary_mask, structure) & ~ndimage.binary_erosion(batch.binary_mask, structure)
    assert batch.edges.any(axis=(1, 2)).all()
    outside = batch.edges & ~band
    # Only sub-pixel star tips, whose coverage never exceeds 0.5, may escape the band.
    assert outside.sum() <= 3e-3 * batch.edges.sum()
    assert np.all(batch.mask[outside] <= 0.5)
    # Every pixel with fractional coverage is crossed by the boundary.
    partial = (batch.mask > 0.05) & (batch.mask < 0.95)
    assert (batch.edges | ~partial).all()


def test_stripe_frequency_recovered_by_fft():
    size = 64
    batch = generate(20, seed=9, size=size, shapes=["square"], textures=["stripes"], background=0.5)
    for i in range(len(batch)):
        inside = ndimage.binary_erosion(batch.mask[i] > 0.999, iterations=1)
        luminance = batch.images[i].mean(axis=0)
        signal = np.where(inside, luminance - luminance[inside].mean(), 0.0)
        spectrum = np.abs(np.fft.fft2(signal))
        spectrum[0, 0] = 0
        row, col = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        fy, fx = np.fft.fftfreq(size)[row], np.fft.fftfreq(size)[col]
        expected = batch.texture_frequency[i] * np.array([np.cos(batch.texture_orientation[i]),
                                                         np.sin(batch.texture_orientation[i])])
        # The peak is at +-f along the orientation, within one frequency bin.
        error = min(np.hypot(fx - expected[0], fy - expected[1]), np.hypot(fx + expected[0], fy + expected[1]))
        assert error <= 1.0 / size * np.sqrt(2), (i, fx, fy, expected)


def test_size_64():
    batch = generate(8, seed=0, size=64, n_objects=(1, 3))
    assert batch.images.shape == (8, 3, 64, 64) and batch.edges.shape == (8, 64, 64)
    assert batch.mask.sum(axis=(1, 2)).min() > 0.2 * 64**2 * 0.2


def test_throughput():
    generate(16, seed=0)
    start = time.perf_counter()
    generate(2000, seed=0)
    assert time.perf_counter() - start < 2.0 * 2  # 2000 images in under 2 s, with slack for a busy CPU


def test_radius_and_rotation_ranges():
    batch = generate(200, seed=3, radius=(0.3, 0.42), max_rotation=15.0, size=32)
    radius = batch.objects.radius[:, 0] / 32
    assert radius.min() >= 0.3 and radius.max() <= 0.42 and radius.max() - radius.min() > 0.08
    rotation = np.rad2deg(batch.objects.rotation[:, 0])
    assert np.abs(rotation).max() <= 15.0 and rotation.min() < -10 and rotation.max() > 10
    # Upright squares are axis-aligned: an unrotated square's mask is a filled box.
    square = generate(1, seed=0, shapes=["square"], radius=(0.35, 0.35), max_rotation=0.0, size=64)
    rows, cols = np.nonzero(square.mask[0] > 0.99)
    box = square.mask[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (box > 0.99).all()
    for bad in ({"radius": (0.4, 0.3)}, {"radius": (0.1, 0.6)}, {"max_rotation": -1.0}):
        with pytest.raises(ValueError):
            generate(1, seed=0, **bad)
