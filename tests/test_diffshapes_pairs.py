"""Counterfactual DiffShapes pairs: exactly one factor differs; render() redraws a parameter set."""

import dataclasses

import numpy as np
import pytest

from denoisefeat.toy.diffshapes import FACTORS, TEXTURES, counterfactual_pairs, generate, render

FIELDS = ("shape", "color", "texture", "center", "radius", "rotation", "texture_frequency",
          "texture_orientation", "texture_phase", "edge_width")
CHANGED = {"shape": {"shape"}, "color": {"color"}, "texture_kind": {"texture", "texture_frequency",
           "texture_orientation"}, "texture_orientation": {"texture_orientation"},
           "texture_frequency": {"texture_frequency"}, "position": {"center"}, "edge_sharpness": {"edge_width"}}


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("size", [32, 64])
def test_pairs_differ_in_one_factor(factor, size):
    a, b = counterfactual_pairs(24, factor=factor, seed=3, size=size)
    textured = factor in ("texture_orientation", "texture_frequency")
    g = generate(24, seed=3, size=size, n_objects=1, textures=TEXTURES[1:] if textured else None)
    np.testing.assert_array_equal(a.images, g.images)
    for name in FIELDS:
        same = np.array_equal(getattr(a.objects, name), getattr(b.objects, name))
        if name not in CHANGED[factor]:
            assert same, name
        elif factor != "texture_kind" or name == "texture":  # a new texture kind may keep its frequency
            assert not same, name
    assert not np.array_equal(a.images, b.images)
    # The background is untouched: far from both objects the images are identical.
    outside = (a.mask == 0) & (b.mask == 0)
    np.testing.assert_array_equal(a.images.transpose(0, 2, 3, 1)[outside], b.images.transpose(0, 2, 3, 1)[outside])


def test_each_factor_really_changes():
    a, b = counterfactual_pairs(32, factor="shape", seed=0)
    assert (a.shape != b.shape).all()
    a, b = counterfactual_pairs(32, factor="color", seed=0)
    assert (a.color != b.color).all()
    a, b = counterfactual_pairs(32, factor="texture_kind", seed=0)
    assert (a.texture != b.texture).all()
    a, b = counterfactual_pairs(32, factor="texture_frequency", seed=0)
    ratio = b.texture_frequency / a.texture_frequency
    assert ((np.abs(np.log(ratio)) >= np.log(1.4) - 1e-9) & (np.abs(np.log(ratio)) <= np.log(1.7) + 1e-9)).all()
    a, b = counterfactual_pairs(32, factor="texture_orientation", seed=0)
    period = np.where(a.texture == 1, np.pi, np.pi / 2)
    turn = np.mod(b.texture_orientation - a.texture_orientation, period)
    turn = np.minimum(turn, period - turn)
    assert ((turn >= 0.3 * period - 1e-9) & (turn <= 0.5 * period + 1e-9)).all()
    a, b = counterfactual_pairs(32, factor="position", seed=0, size=32)
    c, r = b.objects.center[:, 0], b.objects.radius[:, 0]
    assert ((c - r[:, None] >= 0) & (c + r[:, None] <= 31)).all()
    assert (np.linalg.norm(c - a.objects.center[:, 0], axis=1) > 0.5).all()
    a, b = counterfactual_pairs(8, factor="edge_sharpness", seed=0, size=64)
    np.testing.assert_allclose(b.objects.edge_width[:, 0], 5.0)
    # The soft boundary has the same 0.5-coverage contour; its ramp is wider.
    assert ((a.mask > 0.5) == (b.mask > 0.5)).mean() > 0.995
    assert ((b.mask > 0.05) & (b.mask < 0.95)).sum() > 3 * ((a.mask > 0.05) & (a.mask < 0.95)).sum()


def test_render_redraws_generate_and_edits():
    g = generate(6, seed=1, size=32, n_objects=(1, 3))
    background = generate(6, seed=1, size=32, n_objects=1).images * 0 + 0.5
    edited = dataclasses.replace(g.objects, color=np.where(g.objects.color >= 0, 0, -1))
    out = render(edited, background=background)
    assert (out.color == 0).all() and out.images.shape == g.images.shape
    with pytest.raises(ValueError, match="background must have shape"):
        render(g.objects, background=background[:, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render(g.objects, background=background + 1)
    with pytest.raises(ValueError, match="edge_width"):
        render(dataclasses.replace(g.objects, edge_width=np.zeros((6, 3))), background=background)


def test_pairs_reject_bad_input():
    with pytest.raises(ValueError, match="unknown factor"):
        counterfactual_pairs(2, factor="hue", seed=0)
    with pytest.raises(ValueError, match="soft_edge_width"):
        counterfactual_pairs(2, factor="edge_sharpness", seed=0, soft_edge_width=np.nan)
