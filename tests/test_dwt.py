"""The torch periodized DWT (denoisefeat.dwt) against PyWavelets."""

import numpy as np
import pytest
import pywt
import torch

from denoisefeat.dwt import wavedec2_periodization
from denoisefeat.frequency import wavelet_energy


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
@pytest.mark.parametrize("shape", [(32, 32), (48, 40), (24, 33)])  # odd lengths take the dense path
def test_equals_pywavelets(wavelet, shape):
    x = np.random.default_rng(0).standard_normal((2,) + shape)
    level = pywt.dwt_max_level(min(shape), pywt.Wavelet(wavelet).dec_len)
    expected = pywt.wavedec2(x, wavelet, mode="periodization", level=level, axes=(-2, -1))
    got = wavedec2_periodization(torch.from_numpy(x), wavelet=wavelet, level=level)
    np.testing.assert_allclose(got[0].numpy(), expected[0], atol=1e-12)
    for got_level, expected_level in zip(got[1:], expected[1:]):
        for g, e in zip(got_level, expected_level):
            np.testing.assert_allclose(g.numpy(), e, atol=1e-12)


def test_wavelet_energy_of_tensors_runs_in_torch_and_is_differentiable():
    x = np.random.default_rng(1).random((3, 32, 32))
    expected = wavelet_energy(x, wavelet="db2")
    t = torch.from_numpy(x).requires_grad_(True)
    got = wavelet_energy(t, wavelet="db2")
    np.testing.assert_allclose(got.details.detach().numpy(), expected.details, rtol=1e-12)
    np.testing.assert_allclose(got.approximation.detach().numpy(), expected.approximation, rtol=1e-12)
    (grad,) = torch.autograd.grad(got.total.sum(), t)  # Parseval: d sum(x^2) / dx = 2x
    np.testing.assert_allclose(grad.numpy(), 2 * x, rtol=1e-10)


def test_bad_level_is_refused():
    with pytest.raises(ValueError, match="level"):
        wavedec2_periodization(torch.zeros(8, 8), wavelet="haar", level=0)
