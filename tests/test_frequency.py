"""Tests for denoisefeat.frequency: Fourier and wavelet decomposition of image batches."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest
import pywt
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from denoisefeat import frequency as F
from denoisefeat.frequency import DEFAULT_BANDS

SETTINGS = settings(max_examples=25, deadline=None)


def rng(seed=0):
    return np.random.default_rng(seed)


def which_band(f, bands=DEFAULT_BANDS):
    for i, (lo, hi) in enumerate(bands.values()):
        if lo <= f < hi:
            return i
    raise AssertionError(f)


def cosine(shape, ky, kx, phase=0.3):
    """cos(2 pi (ky y / H + kx x / W) + phase): on an FFT bin when ky, kx are integers."""
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    return np.cos(2 * np.pi * (ky * yy / H + kx * xx / W) + phase)


def power_law_image(shape, exponent, seed=0):
    """Real image with random phases and Fourier amplitude exactly |f|**-exponent (DC = 0)."""
    H, W = shape
    noise_ft = np.fft.fft2(rng(seed).standard_normal((H, W)))  # Hermitian: the image stays real
    r = F.radial_frequency((H, W))
    amp = np.zeros_like(r)
    amp[r > 0] = r[r > 0] ** -exponent
    return np.fft.ifft2(noise_ft / np.abs(noise_ft) * amp).real


three_bands = st.tuples(
    st.floats(0.01, 0.3), st.floats(0.01, 0.3)
).map(lambda t: {"a": (0.0, min(t)), "b": (min(t), max(t) + 0.01), "c": (max(t) + 0.01, math.inf)})
band_sets = st.one_of(
    st.just(dict(DEFAULT_BANDS)),
    st.just({"all": (0.0, math.inf)}),
    three_bands,
    st.lists(st.floats(0.005, 0.7), min_size=1, max_size=6, unique=True).map(
        lambda e: {f"b{i}": (lo, hi) for i, (lo, hi) in
                   enumerate(zip([0.0, *sorted(e)], [*sorted(e), math.inf]))}
    ),
)
shapes = st.tuples(st.integers(1, 3), st.integers(2, 13), st.integers(2, 13))


# ----------------------------------------------------------------------------
# Radial frequency and power spectrum
# ----------------------------------------------------------------------------


def test_radial_frequency_square_and_nonsquare():
    r = F.radial_frequency((4, 4))
    np.testing.assert_allclose(r[0], [0, 0.25, 0.5, 0.25])
    assert r[0, 0] == 0 and r.max() == pytest.approx(math.sqrt(0.5))
    r = F.radial_frequency((2, 3, 4, 6))  # leading dims ignored, non-square
    assert r.shape == (4, 6)
    np.testing.assert_allclose(r[0], np.abs(np.fft.fftfreq(6)))
    np.testing.assert_allclose(r[:, 0], np.abs(np.fft.fftfreq(4)))
    np.testing.assert_allclose(r[1, 1], math.hypot(1 / 4, 1 / 6))
    r[0, 0] = 5  # a copy: the cached grid is not affected
    assert F.radial_frequency((4, 6))[0, 0] == 0


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_power_spectrum_parseval(dtype, rtol, backend):
    x = rng().standard_normal((3, 2, 24, 40)).astype(dtype) + 0.5
    if backend == "torch":
        x = torch.from_numpy(x)
    P = F.power_spectrum(x)
    assert P.shape == x.shape and P.dtype == x.dtype
    total = (x.astype(np.float64) if backend == "numpy" else x.double()) ** 2
    np.testing.assert_allclose(np.asarray(P.sum((-2, -1)), dtype=np.float64),
                               np.asarray(total.sum((-2, -1))), rtol=rtol)


def test_power_spectrum_unshifted_dc():
    x = np.full((8, 8), 2.0)
    P = F.power_spectrum(x)
    assert P[0, 0] == pytest.approx(4.0 * 64)
    assert np.abs(P).sum() == pytest.approx(P[0, 0])


def test_window_is_energy_normalised_for_white_noise():
    x = rng(1).standard_normal((100, 32, 32))
    for window in ["hann", "tukey", ("tukey", 0.25)]:
        P = F.power_spectrum(x, window=window)
        assert P.sum((-2, -1)).mean() / (x**2).sum((-2, -1)).mean() == pytest.approx(1, abs=0.02)
    # ... but exact Parseval is gone for a given image
    assert not np.allclose(F.power_spectrum(x[0], window="hann").sum(), (x[0] ** 2).sum())


# ----------------------------------------------------------------------------
# Sinusoids land in their band
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ky, kx",
    [(0, 1), (1, 1), (1, 0),  # low
     (0, 4), (4, 0), (3, 3), (5, 2), (0, 12),  # mid (incl. diagonal)
     (0, 16), (12, 12), (0, 32), (32, 32), (7, 20)],  # high (incl. Nyquist, corner)
)
def test_on_bin_sinusoid_energy_in_its_band(ky, kx):
    N = 64
    f = math.hypot(ky, kx) / N
    E = F.band_energy(cosine((N, N), ky, kx))
    assert E[which_band(f)] / E.sum() >= 0.999


@SETTINGS
@given(st.integers(0, 16), st.integers(0, 16), st.floats(0, 2 * np.pi))
def test_on_bin_sinusoid_any_orientation(ky, kx, phase):
    N = 32
    x = cosine((N, N), ky, kx, phase)
    if (x**2).sum() < 1e-6:  # e.g. cos(pi x + pi/2) sampled at its zeros
        return
    E = F.band_energy(x)
    assert E[which_band(math.hypot(ky, kx) / N)] / E.sum() >= 0.999


@SETTINGS
@given(st.floats(0.5, 30.0), st.floats(0, np.pi), st.floats(0, 2 * np.pi))
def test_off_bin_sinusoid_with_hann_window(radius_bins, angle, phase):
    # Off-bin frequencies leak through the whole spectrum without a window (measured:
    # as little as 88% in the right band at 1.5 bins from DC, 92% at 0.5 bins past an
    # edge).  With a Hann window the leakage decays fast: measured >= 99.93% in the
    # right band over 2000+ random cases at >= 2 bins from a band edge; the bound
    # below leaves 2.5 bins.
    N = 64
    edges_bins = np.array([1 / 16, 1 / 4]) * N
    if np.min(np.abs(radius_bins - edges_bins)) < 2.5:
        return
    ky, kx = radius_bins * math.sin(angle), radius_bins * math.cos(angle)
    E = F.band_energy(cosine((N, N), ky, kx, phase), window="hann")
    assert E[which_band(radius_bins / N)] / E.sum() >= 0.999


# ----------------------------------------------------------------------------
# Radial spectra and slopes
# ----------------------------------------------------------------------------


def test_radial_spectrum_bins():
    s = F.radial_power_spectrum(np.zeros((2, 32, 32)))
    assert isinstance(s, F.RadialSpectrum)
    assert s.freq.shape == (17,) and s.power.shape == (2, 17) and s.counts.shape == (17,)
    np.testing.assert_allclose(s.freq, np.arange(17) / 32)
    assert s.counts[0] == 1  # DC alone
    # every bin with |f| < 0.5 + 1/64 is counted once, the corners are excluded
    assert s.counts.sum() == (F.radial_frequency((32, 32)) < 0.5 + 1 / 64).sum() < 32 * 32
    s = F.radial_power_spectrum(np.zeros((16, 40)), n_bins=5)
    np.testing.assert_allclose(s.freq, [0, 0.125, 0.25, 0.375, 0.5])


def test_white_noise_gives_flat_radial_spectrum():
    sigma, n = 2.0, 128
    x = sigma * rng(2).standard_normal((n, 64, 64))
    s = F.radial_power_spectrum(x)
    mean = s.power.mean(0)
    # each bin averages n * counts exponential(sigma**2) powers, half of them
    # independent (Hermitian symmetry)
    z = (mean - sigma**2) / (sigma**2 / np.sqrt(n * s.counts / 2))
    assert np.abs(z).max() < 5
    assert np.abs(mean[s.counts >= 100] / sigma**2 - 1).max() < 0.05
    assert mean.mean() / sigma**2 == pytest.approx(1, abs=0.01)
    flat = F.RadialSpectrum(freq=s.freq, power=mean, counts=s.counts)
    assert abs(F.spectral_slope(flat)) < 0.05
    assert abs(F.spectral_slope(s).mean()) < 0.05


def test_power_law_image_slope():
    x = power_law_image((64, 64), exponent=1.0)  # amplitude ~ 1/f: power ~ 1/f**2
    s = F.radial_power_spectrum(x)
    # Averaging a steep spectrum over the first ring flattens it (mean of 1/f**2 over
    # the ring of radius 1 bin is 0.75x its value at the centre): the full range
    # fits -1.95, from the second ring on -1.97.
    assert F.spectral_slope(s, fmin=2 / 64) == pytest.approx(-2, abs=0.05)
    assert F.spectral_slope(s) == pytest.approx(-2, abs=0.06)
    x3 = power_law_image((64, 64), exponent=1.5, seed=1)
    assert F.spectral_slope(F.radial_power_spectrum(x3), fmin=2 / 64) == pytest.approx(-3, abs=0.08)


def test_spectral_slope_zero_power_is_nan_and_range_errors():
    x = np.stack([power_law_image((32, 32), 1.0), np.ones((32, 32))])
    slopes = F.spectral_slope(F.radial_power_spectrum(x))
    assert np.isfinite(slopes[0]) and np.isnan(slopes[1])
    s = F.radial_power_spectrum(x)
    with pytest.raises(ValueError, match="at least 2"):
        F.spectral_slope(s, fmin=0.45, fmax=0.46)
    with pytest.raises(ValueError, match="fmin must be smaller"):
        F.spectral_slope(s, fmin=0.3, fmax=0.2)
    with pytest.raises(TypeError, match="RadialSpectrum"):
        F.spectral_slope(s.power)


# ----------------------------------------------------------------------------
# Bands: partition and Parseval
# ----------------------------------------------------------------------------


def test_default_bands_are_immutable_and_ordered():
    assert isinstance(DEFAULT_BANDS, MappingProxyType)
    assert list(DEFAULT_BANDS) == ["low", "mid", "high"]
    with pytest.raises(TypeError):
        DEFAULT_BANDS["low"] = (0, 1)  # type: ignore[index]


def test_band_masks_partition():
    m = F.band_masks((2, 12, 20))
    assert m.shape == (3, 12, 20) and m.dtype == bool
    assert (m.sum(0) == 1).all() and m[0, 0, 0]  # DC in low
    r = F.radial_frequency((12, 20))
    assert (r[m[2]] >= 0.25).all() and (r[m[1]] < 0.25).all()


@SETTINGS
@given(shapes, band_sets, st.sampled_from([np.float64, np.float32]))
def test_band_energies_sum_to_total(shape, bands, dtype):
    x = rng(sum(shape)).standard_normal(shape).astype(dtype) + 1.0
    E = F.band_energy(x, bands=bands)
    assert E.shape == shape[:-2] + (len(bands),) and E.dtype == dtype
    assert (E >= 0).all()
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(E.sum(-1), (x.astype(np.float64) ** 2).sum((-2, -1)), rtol=rtol)


@SETTINGS
@given(shapes, band_sets)
def test_band_pass_partitions_the_image_and_matches_band_energy(shape, bands):
    x = rng(sum(shape) + 1).standard_normal(shape)
    parts = F.band_pass(x, bands=bands)
    assert parts.shape == shape[:-2] + (len(bands),) + shape[-2:]
    assert np.isrealobj(parts)
    np.testing.assert_allclose(parts.sum(-3), x, atol=1e-12)
    np.testing.assert_allclose((parts**2).sum((-2, -1)), F.band_energy(x, bands=bands),
                               rtol=1e-10, atol=1e-12)


def test_band_pass_float32_and_single_band():
    x = rng(3).standard_normal((4, 16, 16)).astype(np.float32)
    parts = F.band_pass(x)
    assert parts.dtype == np.float32
    np.testing.assert_allclose(parts.sum(-3), x, atol=1e-5)
    np.testing.assert_allclose(F.band_pass(x, bands={"all": (0, np.inf)})[:, 0], x, atol=1e-5)


# ----------------------------------------------------------------------------
# Convergence against a reference
# ----------------------------------------------------------------------------


def test_band_relative_error_and_correlation_match_direct_computation():
    g = rng(4)
    ref = g.standard_normal((2, 1, 3, 16, 24))
    imgs = ref + 0.5 * g.standard_normal((2, 5, 3, 16, 24))
    err = F.band_relative_error(imgs, ref)
    corr = F.band_correlation(imgs, ref)
    assert err.shape == corr.shape == (2, 5, 3, 3)
    bi, br = F.band_pass(imgs), F.band_pass(ref)
    direct = ((bi - br) ** 2).sum((-2, -1)) / (br**2).sum((-2, -1))
    np.testing.assert_allclose(err, direct, rtol=1e-10)
    for idx in [(0, 0, 0, 0), (1, 4, 2, 1), (0, 2, 1, 2)]:
        a = bi[idx].ravel()
        b = br[idx[0], 0, idx[2], idx[3]].ravel()
        assert corr[idx] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-10)
    assert (np.abs(corr) <= 1).all()
    np.testing.assert_allclose(F.band_relative_error(ref, ref), 0, atol=1e-12)
    np.testing.assert_allclose(F.band_correlation(ref, ref), 1, rtol=1e-12)
    np.testing.assert_allclose(F.band_correlation(-2 * ref, ref), -1, rtol=1e-12)


def test_empty_and_constant_bands_have_defined_values():
    const = np.full((16, 16), 3.0)  # only a DC term: mid and high are empty
    wave = const + cosine((16, 16), 0, 6)  # adds energy to high
    err = F.band_relative_error(np.stack([const, wave]), const)
    assert err[0].tolist() == [0.0, 0.0, 0.0]
    assert err[1, 0] == pytest.approx(0, abs=1e-12) and err[1, 1] == 0 and err[1, 2] == np.inf
    corr = F.band_correlation(np.stack([const, wave]), wave)
    assert corr[0].tolist() == [0.0, 0.0, 0.0]  # constant images: correlation defined as 0
    assert corr[1, 0] == 0 and corr[1, 1] == 0 and corr[1, 2] == pytest.approx(1)
    assert np.isfinite(F.band_relative_error(np.zeros((8, 8)), np.zeros((8, 8)))).all()


# ----------------------------------------------------------------------------
# Per-band SNR
# ----------------------------------------------------------------------------


def test_scheduler_band_snr_formula_and_shape():
    x0 = rng(5).standard_normal((2, 3, 32, 32))
    alphas = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    snr = F.scheduler_band_snr(x0, alphas_cumprod=alphas)
    assert snr.shape == (2, 3, 5, 3)
    C = F.band_energy(x0) / F.band_masks(x0.shape).sum((-2, -1))
    expected = alphas[1:4, None] * C[..., None, :] / (1 - alphas[1:4, None])
    np.testing.assert_allclose(snr[..., 1:4, :], expected, rtol=1e-12)
    assert (snr[..., 0, :] == 0).all() and np.isposinf(snr[..., 4, :]).all()


def test_natural_image_low_band_has_higher_snr():
    x0 = power_law_image((64, 64), 1.0)
    snr = F.scheduler_band_snr(x0, alphas_cumprod=np.array([0.5]))[0]
    assert snr[0] > snr[1] > snr[2]


def test_measured_snr_matches_scheduler_snr():
    g = rng(6)
    x0 = power_law_image((64, 64), 1.0, seed=3)
    x0 = x0 / x0.std()
    alphas = np.array([0.05, 0.5, 0.95])
    n = 300
    eps = g.standard_normal((n, 3, 64, 64))
    a = alphas[:, None, None]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    measured = F.measured_band_snr(x_t, x0, alpha_cumprod=alphas)  # broadcasts on (n, 3)
    assert measured.shape == (n, 3, 3)
    implied = F.scheduler_band_snr(x0, alphas_cumprod=alphas)  # (3, 3)
    # E_s / E_n with E_s fixed: the harmonic mean over draws estimates E_s / E[E_n]
    harmonic = 1 / (1 / measured).mean(0)
    np.testing.assert_allclose(harmonic, implied, rtol=0.04)
    # noise-free and signal-free limits
    assert np.isposinf(F.measured_band_snr(x0, x0, alpha_cumprod=1.0)).all()
    assert (F.measured_band_snr(eps[0, 0], x0, alpha_cumprod=0.0) == 0).all()


# ----------------------------------------------------------------------------
# Wavelets
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-6)])
def test_wavelet_parseval(wavelet, dtype, rtol):
    x = (rng(7).standard_normal((2, 3, 64, 96)) + 0.3).astype(dtype)  # sym4: 3 levels from 64 px
    we = F.wavelet_energy(x, wavelet=wavelet, level=3)
    assert we.approximation.shape == (2, 3) and we.details.shape == (2, 3, 3, 3)
    assert we.details.dtype == dtype and we.level == 3 and we.wavelet == wavelet
    np.testing.assert_allclose(we.total, (x.astype(np.float64) ** 2).sum((-2, -1)), rtol=rtol)
    rel = we.relative()
    np.testing.assert_allclose(rel.total, 1, rtol=rtol)


def test_wavelet_energy_matches_pywt_per_image():
    x = rng(8).standard_normal((2, 2, 16, 24))
    we = F.wavelet_energy(x, wavelet="db2", level=2, mode="symmetric")
    for i in range(2):
        for c in range(2):
            coeffs = pywt.wavedec2(x[i, c], "db2", mode="symmetric", level=2)
            assert we.approximation[i, c] == pytest.approx((coeffs[0] ** 2).sum(), rel=1e-12)
            for j in (1, 2):  # level 1 = finest = coeffs[-1]
                for o in range(3):
                    assert we.details[i, c, j - 1, o] == pytest.approx(
                        (coeffs[-j][o] ** 2).sum(), rel=1e-12)


def test_wavelet_default_level_and_orientation():
    assert F.wavelet_energy(np.zeros((32, 32))).level == 5  # haar: log2(32)
    assert F.wavelet_energy(np.zeros((32, 32)), wavelet="db2").level == pywt.dwt_max_level(32, 4)
    # a pattern varying along y only (horizontal stripes) is all horizontal detail
    x = np.tile(np.array([1.0, -1.0] * 8)[:, None], (1, 16))
    d = F.wavelet_energy(x, level=1).details[0]
    assert d[0] == pytest.approx((x**2).sum()) and d[1] == 0 and d[2] == 0
    zero = F.wavelet_energy(np.zeros((8, 8))).relative()
    assert zero.total == 0 and not np.isnan(zero.details).any()


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
def test_wavelet_band_pass_partitions_and_matches_energy(wavelet):
    x = rng(9).standard_normal((2, 32, 32))
    parts = F.wavelet_band_pass(x, wavelet=wavelet, level=2)
    assert parts.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(parts.sum(-3), x, atol=1e-9)
    we = F.wavelet_energy(x, wavelet=wavelet, level=2)
    # orthogonal transform: each level's image holds that level's energy
    np.testing.assert_allclose((parts[:, :2] ** 2).sum((-2, -1)), we.details.sum(-1), rtol=1e-9)
    np.testing.assert_allclose((parts[:, 2] ** 2).sum((-2, -1)), we.approximation, rtol=1e-9)


def test_wavelet_band_pass_odd_size_is_cropped():
    x = rng(10).standard_normal((15, 21))
    parts = F.wavelet_band_pass(x, wavelet="haar", level=2, mode="symmetric")
    assert parts.shape == (3, 15, 21)
    np.testing.assert_allclose(parts.sum(0), x, atol=1e-10)


# ----------------------------------------------------------------------------
# Backends, batching, non-square images
# ----------------------------------------------------------------------------


def _all_functions(x, ref):
    """Every public computation, as a dict of name -> array."""
    s = F.radial_power_spectrum(x)
    we = F.wavelet_energy(x, wavelet="db2", level=1)
    a = np.array([0.1, 0.7])
    return {
        "power": F.power_spectrum(x),
        "power_hann": F.power_spectrum(x, window="hann"),
        "radial": s.power,
        "slope": F.spectral_slope(s),
        "band_energy": F.band_energy(x),
        "band_energy_custom": F.band_energy(x, bands={"a": (0, 0.1), "b": (0.1, np.inf)}),
        "band_pass": F.band_pass(x),
        "rel_error": F.band_relative_error(x, ref),
        "corr": F.band_correlation(x, ref),
        "sched_snr": F.scheduler_band_snr(ref, alphas_cumprod=a),
        "meas_snr": F.measured_band_snr(x, ref, alpha_cumprod=0.3),
        "wav_approx": we.approximation,
        "wav_details": we.details,
        "wav_pass": F.wavelet_band_pass(x, wavelet="haar", level=2),
    }


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-10, 1e-10), (np.float32, 1e-5, 1e-5)])
def test_numpy_and_torch_agree(dtype, rtol, atol):
    g = rng(11)
    x = (g.standard_normal((2, 3, 16, 24)) + 0.2).astype(dtype)
    ref = (x[:, :1] + 0.3 * g.standard_normal((2, 1, 16, 24))).astype(dtype)
    out_np = _all_functions(x, ref)
    out_t = _all_functions(torch.from_numpy(x), torch.from_numpy(ref))
    for name, a in out_np.items():
        t = out_t[name]
        assert isinstance(a, np.ndarray) and isinstance(t, torch.Tensor), name
        assert t.dtype == torch.from_numpy(np.asarray(a)).dtype, name
        assert a.dtype == dtype, name
        assert t.shape == a.shape, name
        np.testing.assert_allclose(t.numpy(), a, rtol=rtol, atol=atol * np.abs(a).max(), err_msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_numpy():
    g = rng(14)
    x = g.standard_normal((2, 3, 16, 24)).astype(np.float32)
    ref = g.standard_normal((2, 1, 16, 24)).astype(np.float32)
    out_np = _all_functions(x, ref)
    out_t = _all_functions(torch.from_numpy(x).cuda(), torch.from_numpy(ref).cuda())
    for name, a in out_np.items():
        assert out_t[name].device.type == "cuda", name
        np.testing.assert_allclose(out_t[name].cpu().numpy(), a, rtol=1e-5,
                                   atol=1e-5 * np.abs(a).max(), err_msg=name)


def test_torch_result_types():
    x = torch.randn(2, 16, 16, dtype=torch.float16)
    assert F.power_spectrum(x).dtype == torch.float32
    s = F.radial_power_spectrum(torch.randn(16, 16))
    assert s.freq.dtype == torch.float64 and s.counts.dtype == torch.int64
    xi = torch.ones(8, 8, dtype=torch.int64)
    assert F.band_energy(xi).dtype == torch.get_default_dtype()
    assert F.band_energy(np.ones((8, 8), dtype=np.int64)).dtype == np.float64
    xg = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    F.band_energy(xg)[2].backward()  # the Fourier functions are differentiable
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    F.wavelet_energy(xg)  # detached, no error


def test_leading_dims_equal_a_loop():
    g = rng(12)
    x = g.standard_normal((2, 3, 4, 8, 12))
    ref = g.standard_normal((2, 1, 4, 8, 12))
    batched = _all_functions(x, ref)
    for idx in np.ndindex(2, 3, 4):
        single = _all_functions(x[idx], ref[idx[0], 0, idx[2]])
        for name, a in single.items():
            b = batched[name]
            if name == "sched_snr":  # reference broadcasts over the step axis
                b = b[idx[0], 0, idx[2]]
            else:
                b = b[idx]
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (9, 14), (33, 32)])
def test_non_square_images(shape):
    x = rng(13).standard_normal((2,) + shape)
    np.testing.assert_allclose(F.band_energy(x).sum(-1), (x**2).sum((-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(F.band_pass(x).sum(-3), x, atol=1e-12)
    s = F.radial_power_spectrum(x)
    assert s.power.shape == (2, min(shape) // 2 + 1) and (s.counts > 0).all()
    # a sinusoid on an axis bin of a non-square image lands in its band
    H, W = shape
    for ky, kx in [(0, W // 3), (H // 3, 0)]:
        E = F.band_energy(cosine(shape, ky, kx))
        assert E[which_band(math.hypot(ky / H, kx / W))] / E.sum() >= 0.999


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_images():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.power_spectrum(np.ones(8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.band_energy(torch.ones(8))
    with pytest.raises(ValueError, match="real-valued"):
        F.band_energy(np.ones((4, 4), dtype=complex))
    with pytest.raises(ValueError, match="non-empty"):
        F.band_energy(np.ones((0, 4)))
    with pytest.raises(ValueError, match="window"):
        F.power_spectrum(np.ones((4, 4)), window="nonexistent")


@pytest.mark.parametrize(
    "bands, match",
    [
        ({"low": (0, 0.2), "high": (0.1, np.inf)}, "overlap"),
        ({"low": (0, 0.1), "high": (0.2, np.inf)}, "gap"),
        ({"low": (0.05, 0.1), "high": (0.1, np.inf)}, "start at 0"),
        ({"low": (0, 0.1), "high": (0.1, 0.5)}, "math.inf"),
        ({"low": (0, 0.1), "high": (0.1, 0.05)}, "lo < hi"),
        ({"high": (0.1, np.inf), "low": (0, 0.1)}, "start at 0"),
        ({"low": (0, 0.1, 0.2)}, "pair"),
        ({}, "at least one"),
    ],
)
def test_bad_bands(bands, match):
    with pytest.raises(ValueError, match=match):
        F.band_energy(np.ones((8, 8)), bands=bands)


def test_bad_bands_type():
    with pytest.raises(TypeError, match="mapping"):
        F.band_energy(np.ones((8, 8)), bands=[(0, 0.1), (0.1, np.inf)])


def test_bad_pairs():
    with pytest.raises(ValueError, match="same image size"):
        F.band_relative_error(np.ones((8, 8)), np.ones((8, 6)))
    with pytest.raises(ValueError, match="broadcast"):
        F.band_correlation(np.ones((2, 8, 8)), np.ones((3, 8, 8)))
    with pytest.raises(TypeError, match="both"):
        F.band_correlation(np.ones((8, 8)), torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.scheduler_band_snr(np.ones((8, 8)), alphas_cumprod=[0.5, 1.2])
    with pytest.raises(ValueError, match="1-D"):
        F.scheduler_band_snr(np.ones((8, 8)), alphas_cumprod=0.5)
    with pytest.raises(ValueError, match="broadcast"):
        F.measured_band_snr(np.ones((3, 8, 8)), np.ones((8, 8)), alpha_cumprod=[0.1, 0.2])
    with pytest.raises(ValueError, match="hold no FFT bin"):  # 4x4: no bin with 0.1 <= |f| < 0.2
        F.scheduler_band_snr(np.ones((4, 4)), alphas_cumprod=[0.5],
                             bands={"a": (0, 0.1), "b": (0.1, 0.2), "c": (0.2, np.inf)})


def test_bad_radial_bins():
    with pytest.raises(ValueError, match="too fine"):
        F.radial_power_spectrum(np.ones((16, 16)), n_bins=40)
    with pytest.raises(ValueError, match="n_bins"):
        F.radial_power_spectrum(np.ones((16, 16)), n_bins=1)
    with pytest.raises(ValueError, match="too small"):
        F.radial_power_spectrum(np.ones((1, 16)))


def test_bad_wavelet_arguments():
    with pytest.raises(ValueError, match="did you mean.*'db2'"):
        F.wavelet_energy(np.ones((8, 8)), wavelet="db 2")
    with pytest.raises(ValueError, match="did you mean.*'sym4'"):
        F.wavelet_band_pass(np.ones((8, 8)), wavelet="sim4")
    with pytest.raises(ValueError, match="continuous"):
        F.wavelet_energy(np.ones((8, 8)), wavelet="morl")
    with pytest.raises(ValueError, match="at most 3"):
        F.wavelet_energy(np.ones((8, 8)), level=4)
    with pytest.raises(ValueError, match="positive integer"):
        F.wavelet_energy(np.ones((8, 8)), level=0)
    with pytest.raises(ValueError, match="periodization"):
        F.wavelet_energy(np.ones((8, 8)), mode="periodisation")
    with pytest.raises(ValueError, match="too small"):
        F.wavelet_energy(np.ones((2, 2)), wavelet="db4")
