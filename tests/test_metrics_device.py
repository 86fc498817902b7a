"""device_metrics (torch, on the tensors' device) against compute_metrics (numpy / scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoisefeat.metrics import METRICS, compute_metrics
from denoisefeat.metrics.device import (
    DEVICE_METRICS,
    DIFFERENTIABLE_METRICS,
    device_metrics,
)


def _trajectory(size=(32, 32), S=2, T=3, channels=3, seed=0):
    """DiffShapes images blended from grey noise (step 0) to the clean image (last step)."""
    from denoisefeat.toy.diffshapes import generate

    ims = generate(S, seed=seed, size=max(size)).images.astype(np.float64)[..., : size[0], : size[1]]
    if channels == 1:
        ims = ims.mean(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    w = np.linspace(0, 1, T)[None, :, None, None, None]
    noise = 0.5 + 0.15 * rng.standard_normal((S, T) + ims.shape[1:])
    return np.clip(w * ims[:, None] + (1 - w) * noise, 0, 1), ims[:, None]


def _assert_equal_to_reference(images, reference, **kwargs):
    expected = compute_metrics(images, reference, **kwargs)
    got = device_metrics(torch.from_numpy(images), None if reference is None else torch.from_numpy(reference),
                         **kwargs)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-7, atol=1e-9, err_msg=name)


def test_every_default_metric_is_placed():
    usable = {n for n, s in METRICS.items() if s.needs_reference in (None, "image")}
    assert set(DEVICE_METRICS) == usable
    assert set(DIFFERENTIABLE_METRICS) <= set(DEVICE_METRICS)


@pytest.mark.parametrize("size", [(32, 32), (36, 44)])
def test_rgb_trajectory_equals_compute_metrics(size):
    images, reference = _trajectory(size)
    _assert_equal_to_reference(images, reference)


def test_grey_images_and_no_reference():
    images, reference = _trajectory(channels=1)
    _assert_equal_to_reference(images, reference)
    _assert_equal_to_reference(images, None)


def test_constant_and_identical_images():
    images, reference = _trajectory(S=2, T=2)
    images[0, 0] = 0.25  # constant image: Otsu, coverage and GLCM special cases
    reference[1, 0] = 0.6  # a constant reference
    images[1, 1] = reference[1, 0]  # identical to its reference: psnr +inf, ssim 1
    _assert_equal_to_reference(images, reference)
    got = device_metrics(torch.from_numpy(images), torch.from_numpy(reference), names=["psnr"])
    assert got["psnr"][1, 1] == np.inf


def test_plateaus_and_odd_sizes_of_the_pixel_comparisons():
    """LBP compares 8-bit neighbours with >=, Otsu and GLCM bin pixels: ties and odd sizes must agree too."""
    rng = np.random.default_rng(3)
    images = np.round(rng.random((2, 2, 3, 21, 26)) * 4) / 4  # plateaus everywhere
    reference = rng.random((2, 1, 3, 21, 26))
    names = ["edge_density", "edge_sharpness", "edge_f1", "lbp_distance", "mask_iou", "hu_moment_distance",
             "glcm_contrast", "glcm_correlation"]
    _assert_equal_to_reference(images, reference, names=names)


def test_selection_broadcasts_and_keeps_registry_order():
    images, reference = _trajectory()
    names = ["colorfulness", "ssim", "edge_f1"]
    _assert_equal_to_reference(images, reference, names=names)
    got = device_metrics(torch.from_numpy(images), torch.from_numpy(reference), names=names)
    assert list(got) == [n for n in METRICS if n in names]


def test_large_images_take_the_running_sum_and_slice_filters():
    """Above 128 px the SSIM windows are running sums (float64) or shifted-slice sums (float32)."""
    images, reference = _trajectory((136, 130), S=1, T=2)
    names = ["ssim", "ms_ssim", "band_ssim_high"]
    _assert_equal_to_reference(images, reference, names=names)
    expected = compute_metrics(images, reference, names=names)
    got = device_metrics(torch.from_numpy(images).float(), torch.from_numpy(reference).float(), names=names)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-4, atol=1e-4, err_msg=name)


def test_float32_is_close():
    images, reference = _trajectory()
    expected = compute_metrics(images, reference, names=["ssim", "ms_ssim", "psnr", "delta_e2000"])
    got = device_metrics(torch.from_numpy(images).float(), torch.from_numpy(reference).float(), names=list(expected))
    for name, value in expected.items():
        assert got[name].dtype == torch.float32
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-4, atol=1e-4, err_msg=name)


def test_differentiable_metrics_have_gradients():
    images, reference = _trajectory(S=1, T=3)  # step 1: half noise, half the reference
    x = torch.from_numpy(np.clip(images[:, 1:2], 0.02, 0.98)).requires_grad_(True)
    y = torch.from_numpy(reference)
    values = device_metrics(x, y, names=list(DIFFERENTIABLE_METRICS))
    for name in DIFFERENTIABLE_METRICS:
        (grad,) = torch.autograd.grad(values[name][0, 0], x, retain_graph=True)
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_bad_input_is_refused_with_a_message():
    images, reference = _trajectory(S=1, T=1)
    x, y = torch.from_numpy(images), torch.from_numpy(reference)
    with pytest.raises(TypeError, match="torch.Tensor"):
        device_metrics(images, y)
    with pytest.raises(TypeError, match="floating-point"):
        device_metrics((x * 255).to(torch.uint8), None)
    with pytest.raises(ValueError, match="NaN"):
        device_metrics(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        device_metrics(x * 2 - 1, y)
    with pytest.raises(ValueError, match="shape"):
        device_metrics(x[0, 0, 0], None)
    with pytest.raises(ValueError, match="differ"):
        device_metrics(x, y[..., :16])
    with pytest.raises(ValueError, match="broadcast"):
        device_metrics(torch.cat([x, x], dim=1), torch.cat([y, y, y], dim=1))
    with pytest.raises(ValueError, match="need a reference"):
        device_metrics(x, None, names=["ssim"])
    with pytest.raises(ValueError, match="ground truth"):
        device_metrics(x, y, names=["mask_iou_gt"])
    with pytest.raises(KeyError, match="unknown"):
        device_metrics(x, y, names=["ssmi"])


def test_constants_agree_with_the_reference_modules():
    from denoisefeat.metrics import color, device, edges, foreground, shape, similarity

    assert (device._REFERENCE_SIZE, device._CHROMA_EPS, device._MIN_CONTRAST) == (
        foreground._REFERENCE_SIZE, foreground._CHROMA_EPS, foreground._MIN_CONTRAST)
    assert device._CHROMA_PRIOR == color._CHROMA_PRIOR
    assert device._HU_EPS == shape._HU_EPS
    assert device._MS_SSIM_WEIGHTS == similarity.MS_SSIM_WEIGHTS
    assert (device._K1, device._K2) == (similarity._K1, similarity._K2)
    assert (device._CANNY_LOW, device._CANNY_HIGH) == (edges._CANNY_LOW, edges._CANNY_HIGH)
