"""Fourier and wavelet decomposition of batches of images.

Every function here takes images of shape ``(..., H, W)``: the transforms act on
the last two axes and batch over any leading axes (sample, step, channel, ...).
Results keep those leading axes in front.

Two backends give the same results:

* a NumPy array (or anything :func:`numpy.asarray` accepts) in, NumPy out;
* a :class:`torch.Tensor` in, a tensor out on the same device, so the Fourier
  functions run on the GPU when the data is there.  The wavelet functions are
  the exception: PyWavelets works on NumPy arrays, so tensors are copied to the
  host, transformed there and the result is moved back to the input's device,
  except :func:`wavelet_energy` in its default ``periodization`` mode, which runs
  on the device (:mod:`denoisefeat.dwt`).

Conventions
-----------
Discrete Fourier transforms use ``norm="ortho"`` (unitary), so that energy is
preserved (Parseval)::

    power_spectrum(x).sum(axis=(-2, -1)) == (x ** 2).sum(axis=(-2, -1))

and white noise of unit variance per pixel has an expected power of exactly 1
in every frequency bin.  Spectra are *unshifted*: bin ``[0, 0]`` is the DC term
and the layout follows :func:`numpy.fft.fftfreq` on both axes (apply
:func:`numpy.fft.fftshift` / :func:`torch.fft.fftshift` to display them
centred).

Frequencies are in cycles per pixel.  The radial frequency of a bin is
``|f| = sqrt(f_y**2 + f_x**2)`` and ranges from 0 to ``sqrt(0.5) ~ 0.707`` (the
corners of the spectrum); 0.5 is the Nyquist frequency along one axis.

Float32 and float64 inputs are computed in their own precision; sums over many
frequency bins accumulate in float64 and the results come back in the input's
dtype.  Integer and boolean inputs are computed in float64 (NumPy) or in
torch's default float dtype (torch); float16 / bfloat16 in float32.

Bands
-----
A set of bands is an ordered mapping ``{name: (lo, hi)}`` of half-open
intervals ``lo <= |f| < hi`` that partitions the radial frequencies: the first
band starts at 0 (so it holds the DC term), each band starts where the previous
one ends, and the last one ends at ``math.inf`` (or anywhere above ``sqrt(0.5)``)
so that it holds the corners of the spectrum.  The band axis of every result
follows the mapping's order.  See :data:`DEFAULT_BANDS`.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BANDS",
    "RadialSpectrum",
    "WaveletEnergy",
    "band_correlation",
    "band_energy",
    "band_masks",
    "band_pass",
    "band_relative_error",
    "measured_band_snr",
    "power_spectrum",
    "radial_frequency",
    "radial_power_spectrum",
    "scheduler_band_snr",
    "spectral_slope",
    "wavelet_band_pass",
    "wavelet_energy",
]

#: Default frequency bands, in cycles per pixel of radial frequency ``|f|``.
#:
#: ``low = [0, 1/16)``, ``mid = [1/16, 1/4)``, ``high = [1/4, inf)``.
#:
#: The edges are octaves and line up with a dyadic wavelet decomposition:
#: detail level ``j`` covers roughly ``[2**-(j+1), 2**-j]`` cycles/pixel, so
#: ``high`` ~ wavelet level 1 (periods of 2-4 px: edges and pixel-scale detail),
#: ``mid`` ~ levels 2-3 (periods of 4-16 px: textures and object parts) and
#: ``low`` ~ the level-3 approximation (periods above 16 px: layout and global
#: shape).  On a 32 px image ``low`` holds the DC term and the one-cycle-per-image
#: ring, ``mid`` 2-7 cycles per image and ``high`` 8 or more; on a 64 px image
#: (or a 64x64 Stable Diffusion latent, i.e. a 512 px picture) ``low`` holds fewer
#: than 4 cycles per image.  The high band covers most of the frequency plane
#: (about 80% of the bins, corners included) but, for natural images whose power
#: falls as ``1/f**2``, little of the energy.
DEFAULT_BANDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"low": (0.0, 1.0 / 16.0), "mid": (1.0 / 16.0, 0.25), "high": (0.25, math.inf)}
)

_MAX_RADIUS = math.sqrt(0.5)  # the largest radial frequency of any grid (corners)


# ----------------------------------------------------------------------------
# Array-namespace shim: the few operations that differ between NumPy and torch.
# ----------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


class _NumpyNS:
    is_torch = False

    def prepare(self, x: Any, name: str) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind == "c":
            raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        elif a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        return a

    @staticmethod
    def eps(dtype) -> float:
        return float(np.finfo(dtype).eps)

    @staticmethod
    def result_dtype(a, b):
        return np.result_type(a.dtype, b.dtype)

    @staticmethod
    def fft2(x):
        return np.fft.fft2(x, norm="ortho")

    @staticmethod
    def rfft2(x):
        return np.fft.rfft2(x, norm="ortho")

    @staticmethod
    def ifft2(x):
        return np.fft.ifft2(x, norm="ortho")

    @staticmethod
    def sum(x, axis):
        return x.sum(axis=axis)

    @staticmethod
    def acc(x):
        return x.astype(np.float64, copy=False)

    @staticmethod
    def cast(x, dtype):
        return x.astype(dtype, copy=False)

    @staticmethod
    def const(a, *, dtype, like):
        return np.asarray(a, dtype=dtype)

    @staticmethod
    def where(cond, a, b):
        return np.where(cond, a, b)

    @staticmethod
    def sqrt(x):
        return np.sqrt(x)

    @staticmethod
    def log(x):
        return np.log(x)

    @staticmethod
    def clip(x, lo, hi):
        return np.clip(x, lo, hi)

    @staticmethod
    def any_last(x):
        return x.any(axis=-1)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)

    @staticmethod
    def from_numpy(a, like):
        return a

    @staticmethod
    def acc_dtype(like):
        return np.float64

    @staticmethod
    def bin_sum(values, index: np.ndarray, n: int):
        """Sum ``values`` (..., N) over the bins ``index`` (N,) -> (..., n), in float64.

        Indices equal to ``n`` are dropped.
        """
        values = values.astype(np.float64, copy=False)
        order, starts, nonempty = _segments(index, n)
        out = np.zeros(values.shape[:-1] + (n,), dtype=np.float64)
        if nonempty.any():
            out[..., nonempty] = np.add.reduceat(
                values[..., order], starts[nonempty], axis=-1
            )
        return out


@functools.lru_cache(maxsize=64)
def _segments_cached(index_bytes: bytes, size: int, n: int):
    index = np.frombuffer(index_bytes, dtype=np.int64, count=size)
    order = np.argsort(index, kind="stable")
    counts = np.bincount(index, minlength=n + 1)[:n]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    # keep only indices < n in the gathered values: they sort first
    order = order[: int(counts.sum())]
    for a in (order, starts):
        a.setflags(write=False)
    return order, starts, counts > 0


def _segments(index: np.ndarray, n: int):
    index = np.ascontiguousarray(index, dtype=np.int64)
    return _segments_cached(index.tobytes(), index.size, n)


class _TorchNS:
    is_torch = True

    def __init__(self):
        import torch

        self.torch = torch

    def prepare(self, x, name: str):
        torch = self.torch
        if x.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.to(torch.float32)
        elif not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return x

    def eps(self, dtype) -> float:
        return float(self.torch.finfo(dtype).eps)

    def result_dtype(self, a, b):
        return self.torch.promote_types(a.dtype, b.dtype)

    def fft2(self, x):
        return self.torch.fft.fft2(x, norm="ortho")

    def rfft2(self, x):
        return self.torch.fft.rfft2(x, norm="ortho")

    def ifft2(self, x):
        return self.torch.fft.ifft2(x, norm="ortho")

    @staticmethod
    def sum(x, axis):
        return x.sum(dim=axis)

    def acc(self, x):
        # MPS has no float64; accumulate in float32 there.
        if x.device.type == "mps":
            return x.to(self.torch.float32)
        return x.to(self.torch.float64)

    @staticmethod
    def cast(x, dtype):
        return x.to(dtype)

    def const(self, a, *, dtype, like):
        if like.device.type == "mps" and dtype == self.torch.float64:
            dtype = self.torch.float32
        a = np.asarray(a)
        if not a.flags.writeable:  # cached read-only arrays: torch wants writable ones
            a = a.copy()
        return self.torch.as_tensor(a, dtype=dtype, device=like.device)

    def where(self, cond, a, b):
        torch = self.torch
        dtype = None
        for v in (a, b):  # scalars take the (promoted) dtype of the tensor operands
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                dtype = v.dtype if dtype is None else torch.promote_types(dtype, v.dtype)
        dtype = dtype or torch.get_default_dtype()
        a = torch.as_tensor(a, dtype=dtype, device=cond.device)
        b = torch.as_tensor(b, dtype=dtype, device=cond.device)
        return torch.where(cond, a, b)

    def sqrt(self, x):
        return self.torch.sqrt(x)

    def log(self, x):
        return self.torch.log(x)

    def clip(self, x, lo, hi):
        return self.torch.clamp(x, lo, hi)

    @staticmethod
    def any_last(x):
        return x.any(dim=-1)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def from_numpy(self, a, like):
        return self.torch.from_numpy(np.array(a, copy=True)).to(like.device)

    def acc_dtype(self, like):
        return self.torch.float32 if like.device.type == "mps" else self.torch.float64

    def bin_sum(self, values, index: np.ndarray, n: int):
        values = self.acc(values)
        idx = self.const(index, dtype=self.torch.int64, like=values)
        out = values.new_zeros(values.shape[:-1] + (n + 1,))
        out.index_add_(-1, idx, values)
        return out[..., :n]


_NUMPY = _NumpyNS()


def _ns(x) -> _NumpyNS | _TorchNS:
    return _TorchNS() if _is_tensor(x) else _NUMPY


def _prepare(images, name: str = "images"):
    """Return ``(namespace, float array)`` after checking the image shape."""
    xp = _ns(images)
    x = xp.prepare(images, name)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., H, W) with at least 2 dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{name} must have non-empty H and W, got shape {tuple(x.shape)}")
    return xp, x


def _prepare_pair(images, reference, *, names=("images", "reference")):
    if _is_tensor(images) != _is_tensor(reference):
        raise TypeError(
            f"{names[0]} and {names[1]} must both be NumPy arrays or both be torch "
            f"tensors, got {type(images).__name__} and {type(reference).__name__}"
        )
    xp, x = _prepare(images, names[0])
    _, r = _prepare(reference, names[1])
    if tuple(x.shape[-2:]) != tuple(r.shape[-2:]):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same image size (H, W), got "
            f"{tuple(x.shape[-2:])} and {tuple(r.shape[-2:])}"
        )
    try:
        np.broadcast_shapes(tuple(x.shape[:-2]), tuple(r.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"the leading dimensions of {names[0]} {tuple(x.shape[:-2])} and "
            f"{names[1]} {tuple(r.shape[:-2])} do not broadcast"
        ) from None
    if xp.is_torch and x.device != r.device:
        raise ValueError(
            f"{names[0]} and {names[1]} are on different devices: {x.device} and {r.device}"
        )
    dtype = xp.result_dtype(x, r)
    return xp, xp.cast(x, dtype), xp.cast(r, dtype)


def _flat(x):
    """(..., H, W) -> (..., H*W)."""
    return x.reshape(tuple(x.shape[:-2]) + (x.shape[-2] * x.shape[-1],))


def _power(xp, F):
    return F.real**2 + F.imag**2


# ----------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _window_2d(window, shape: tuple[int, int]) -> np.ndarray:
    from scipy.signal import get_window

    H, W = shape
    try:
        w = np.outer(get_window(window, H), get_window(window, W))
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"unknown or invalid window {window!r} ({err}); use None, a name such as "
            "'hann', 'hamming', 'blackman', 'tukey', or a tuple such as ('tukey', 0.25) "
            "accepted by scipy.signal.get_window"
        ) from None
    ms = float(np.mean(w**2))
    if not ms > 0:
        raise ValueError(f"window {window!r} is zero everywhere on a {H}x{W} grid")
    w = w / math.sqrt(ms)  # energy-normalised: mean(w**2) == 1
    w.setflags(write=False)
    return w


def _apply_window(xp, x, window):
    if window is None:
        return x
    if isinstance(window, list):
        window = tuple(window)
    w = _window_2d(window, (int(x.shape[-2]), int(x.shape[-1])))
    return x * xp.const(w, dtype=x.dtype, like=x)


# ----------------------------------------------------------------------------
# Fourier: spectra
# ----------------------------------------------------------------------------


def radial_frequency(shape) -> np.ndarray:
    """Radial frequency of every FFT bin, in cycles per pixel.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(..., H, W)``; only the last two entries are used, so
        ``radial_frequency(images.shape)`` works for a batch.

    Returns
    -------
    freq : ndarray of float64, shape (H, W)
        ``sqrt(fy**2 + fx**2)`` with ``fy = fftfreq(H)`` along the rows and
        ``fx = fftfreq(W)`` along the columns, in the unshifted FFT layout of
        :func:`power_spectrum`.  Values lie in ``[0, sqrt(0.5)]``; bin ``[0, 0]``
        is the DC term.  Non-square images have different frequency spacings on
        the two axes (``1/H`` and ``1/W``).

    Examples
    --------
    >>> radial_frequency((4, 4))[0]
    array([0.  , 0.25, 0.5 , 0.25])
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[-1] < 1 or shape[-2] < 1:
        raise ValueError(f"shape must be (..., H, W) with H, W >= 1, got {shape}")
    return _radial_frequency(shape[-2], shape[-1]).copy()


@functools.lru_cache(maxsize=64)
def _radial_frequency(H: int, W: int) -> np.ndarray:
    fy = np.fft.fftfreq(H)
    fx = np.fft.fftfreq(W)
    r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    r.setflags(write=False)
    return r


def power_spectrum(images, *, window=None):
    """Power spectrum ``|FFT2(x)|**2`` of each image, with unitary normalisation.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images; the transform acts on the last two axes.
    window : None, str or tuple, optional
        Taper applied to each image before the transform, as accepted by
        :func:`scipy.signal.get_window` (``"hann"``, ``"tukey"``,
        ``("tukey", 0.25)``, ...), used separably on both axes.  ``None`` (the
        default) applies no window.

    Returns
    -------
    power : ndarray or torch.Tensor, shape (..., H, W)
        Unshifted power spectrum (DC at ``[..., 0, 0]``, layout of
        :func:`radial_frequency`), same backend, device and float dtype as the
        input.

    Notes
    -----
    The FFT uses ``norm="ortho"``, so without a window Parseval's identity holds
    exactly: ``power.sum(axis=(-2, -1)) == (images ** 2).sum(axis=(-2, -1))``,
    and white noise of variance ``s**2`` has expected power ``s**2`` in every bin.

    A window reduces spectral leakage (the periodic FFT sees a jump between
    opposite image borders) at the cost of exact Parseval: the window is
    energy-normalised (``mean(w**2) == 1``) so that the *expected* total power
    of white noise is unchanged, but the total power of a given image is not.
    The window is applied to the raw images; a large mean value leaks into the
    lowest rings, so subtract the per-image mean first when that matters.

    References
    ----------
    .. [1] F. J. Harris, "On the use of windows for harmonic analysis with the
       discrete Fourier transform", Proc. IEEE 66(1), 1978.
    """
    xp, x = _prepare(images)
    dtype = x.dtype
    x = _apply_window(xp, x, window)
    return xp.cast(_power(xp, xp.fft2(x)), dtype)


@dataclass(frozen=True, eq=False)
class RadialSpectrum:
    """Radially averaged power spectrum (see :func:`radial_power_spectrum`).

    Attributes
    ----------
    freq : ndarray or torch.Tensor, shape (n_bins,)
        Bin centres in cycles per pixel, evenly spaced from 0 to 0.5 (float64).
    power : ndarray or torch.Tensor, shape (..., n_bins)
        Mean power per FFT bin in each annulus.
    counts : ndarray or torch.Tensor of int64, shape (n_bins,)
        Number of FFT bins averaged in each annulus.
    """

    freq: Any
    power: Any
    counts: Any


@functools.lru_cache(maxsize=64)
def _radial_bins(H: int, W: int, n_bins: int | None):
    if n_bins is None:
        n_bins = min(H, W) // 2 + 1
        if n_bins < 2:
            raise ValueError(
                f"images of size {H}x{W} are too small for a radial spectrum; pass "
                "n_bins >= 2 explicitly"
            )
    elif isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    n_bins = int(n_bins)
    delta = 0.5 / (n_bins - 1)
    r = _radial_frequency(H, W).ravel()
    idx = np.floor(r / delta + 0.5).astype(np.int64)
    idx[idx >= n_bins] = n_bins  # corners beyond the last annulus: dropped
    counts = np.bincount(idx, minlength=n_bins + 1)[:n_bins]
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"n_bins={n_bins} is too fine for {H}x{W} images: annuli {empty} hold no "
            f"FFT bin; use at most {min(H, W) // 2 + 1} bins"
        )
    freq = np.arange(n_bins) * delta
    for a in (idx, counts, freq):
        a.setflags(write=False)
    return idx, counts, freq


@functools.lru_cache(maxsize=64)
def _half_plane(H: int, W: int, n_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The annulus of each rfft2 bin (H * (W // 2 + 1),) and its weight (W // 2 + 1,): 1 for the
    columns that are their own mirror image (0 and, for even W, W / 2), 2 for the others."""
    idx = _radial_bins(H, W, n_bins)[0].reshape(H, W)[:, : W // 2 + 1]
    weight = np.full(W // 2 + 1, 2.0)
    weight[0] = 1.0
    if W % 2 == 0:
        weight[-1] = 1.0
    idx = np.ascontiguousarray(idx).ravel()
    for a in (idx, weight):
        a.setflags(write=False)
    return idx, weight


def radial_power_spectrum(images, *, n_bins=None, window=None) -> RadialSpectrum:
    """Radially averaged power spectral density (RAPSD) of each image.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images.
    n_bins : int, optional
        Number of annuli, evenly spaced from 0 to 0.5 cycles/pixel.  Default:
        ``min(H, W) // 2 + 1``, one annulus per integer radius of a square image
        (bin ``k`` at ``k / N``).  More bins than that leave annuli empty, which
        raises a ``ValueError``.
    window : None, str or tuple, optional
        Window applied before the transform, see :func:`power_spectrum`.

    Returns
    -------
    spectrum : RadialSpectrum
        ``freq`` (n_bins,), ``power`` (..., n_bins) and ``counts`` (n_bins,), on
        the input's backend and device; ``power`` in the input's float dtype.

    Notes
    -----
    With bin spacing ``d = 0.5 / (n_bins - 1)``, annulus ``i`` collects the FFT
    bins with ``(i - 1/2) d <= |f| < (i + 1/2) d``; for square images and the
    default binning, bin 0 is the DC term alone.  ``power`` is the *mean* power per FFT bin of the
    annulus (so white noise of variance ``s**2`` gives ``s**2`` in every
    annulus).  Frequencies above the last annulus, ``|f| >= 0.5 + d/2`` (the
    corners of the spectrum, only reached diagonally), are excluded.

    References
    ----------
    .. [1] A. van der Schaaf and J. H. van Hateren, "Modelling the power spectra
       of natural images: statistics and information", Vision Research 36(17),
       1996.
    """
    xp, x = _prepare(images)
    H, W = int(x.shape[-2]), int(x.shape[-1])
    idx, counts, freq = _radial_bins(H, W, n_bins)
    # The spectrum of a real image is Hermitian: the half plane of rfft2 holds every bin once or,
    # for the columns with a mirror image, twice (weight 2), at half the cost of the full FFT.
    half, weight = _half_plane(H, W, n_bins)
    P = _power(xp, xp.rfft2(_apply_window(xp, x, window))) * xp.const(weight, dtype=x.dtype, like=x)
    sums = xp.bin_sum(_flat(P), half, len(counts))
    power = xp.cast(sums / xp.const(counts, dtype=sums.dtype, like=sums), x.dtype)
    return RadialSpectrum(
        freq=xp.from_numpy(freq, like=x) if xp.is_torch else freq.copy(),
        power=power,
        counts=xp.from_numpy(counts.copy(), like=x) if xp.is_torch else counts.copy(),
    )


def spectral_slope(spectrum: RadialSpectrum, *, fmin=None, fmax=None):
    """Slope of ``log(power)`` against ``log(freq)`` (least squares).

    Parameters
    ----------
    spectrum : RadialSpectrum
        As returned by :func:`radial_power_spectrum`.
    fmin, fmax : float, optional
        Range of bin centres used, in cycles/pixel (inclusive).  The DC bin
        (``freq == 0``) is always excluded.  Defaults: every bin with
        ``freq > 0``.

    Returns
    -------
    slope : ndarray or torch.Tensor, shape (...,)
        The exponent ``a`` of a power law ``power ~ freq**a``: about ``-2`` for
        natural images, 0 for white noise.  ``nan`` where a fitted bin has zero
        power.

    Notes
    -----
    Ordinary least squares on the log-log points, every annulus weighted
    equally.
    """
    if not isinstance(spectrum, RadialSpectrum):
        raise TypeError(
            f"spectrum must be a RadialSpectrum, got {type(spectrum).__name__}"
        )
    xp = _ns(spectrum.power)
    f = np.asarray(xp.to_numpy(spectrum.freq), dtype=np.float64)
    sel = f > 0
    if fmin is not None:
        sel &= f >= fmin
    if fmax is not None:
        sel &= f <= fmax
    if fmin is not None and fmax is not None and not fmin < fmax:
        raise ValueError(f"fmin must be smaller than fmax, got fmin={fmin}, fmax={fmax}")
    if sel.sum() < 2:
        raise ValueError(
            f"at least 2 non-zero frequency bins are needed in [fmin, fmax] = "
            f"[{fmin}, {fmax}], got {int(sel.sum())} (bins at {f.tolist()})"
        )
    u = np.log(f[sel])
    u = u - u.mean()
    w = u / (u @ u)  # slope = sum_i w_i log P_i
    cols = xp.const(np.flatnonzero(sel), dtype=None, like=spectrum.power)
    P = xp.acc(spectrum.power[..., cols])
    positive = P > 0
    logP = xp.log(xp.where(positive, P, 1.0))
    slope = logP @ xp.const(w, dtype=logP.dtype, like=logP)
    slope = xp.where(xp.any_last(~positive), math.nan, slope)
    return xp.cast(slope, spectrum.power.dtype)


# ----------------------------------------------------------------------------
# Fourier: bands
# ----------------------------------------------------------------------------


def _validate_bands(bands) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Check that ``bands`` partitions [0, inf); return (names, edges)."""
    if not isinstance(bands, Mapping):
        raise TypeError(
            "bands must be a mapping {name: (lo, hi)}, e.g. "
            f"{dict(DEFAULT_BANDS)}, got {type(bands).__name__}"
        )
    if len(bands) == 0:
        raise ValueError("bands must hold at least one band")
    names: list[str] = []
    edges: list[float] = []
    prev_name, prev_hi = None, 0.0
    for name, interval in bands.items():
        if not isinstance(name, str):
            raise TypeError(f"band names must be strings, got {name!r}")
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(
                f"band {name!r} must be a pair (lo, hi) of numbers, got {interval!r}"
            ) from None
        if math.isnan(lo) or math.isnan(hi) or not lo < hi:
            raise ValueError(f"band {name!r} = ({lo}, {hi}) must have lo < hi")
        if prev_name is None:
            if lo != 0.0:
                raise ValueError(
                    f"the first band {name!r} must start at 0 (it holds the DC term), "
                    f"got {lo}"
                )
        elif lo < prev_hi:
            raise ValueError(
                f"bands {prev_name!r} and {name!r} overlap: {prev_name!r} ends at "
                f"{prev_hi} and {name!r} starts at {lo}; bands must be ordered by "
                "frequency and contiguous"
            )
        elif lo > prev_hi:
            raise ValueError(
                f"gap between bands {prev_name!r} (ends at {prev_hi}) and {name!r} "
                f"(starts at {lo}); bands must be contiguous so that they partition "
                "the spectrum"
            )
        names.append(name)
        edges.append(lo)
        prev_name, prev_hi = name, hi
    if not prev_hi > _MAX_RADIUS:
        raise ValueError(
            f"the last band {prev_name!r} ends at {prev_hi}, below the largest radial "
            f"frequency sqrt(0.5) ~ {_MAX_RADIUS:.4f}; end it at math.inf so that the "
            "bands cover the whole spectrum (corners included)"
        )
    edges.append(math.inf)
    return tuple(names), tuple(edges)


@functools.lru_cache(maxsize=64)
def _band_index(H: int, W: int, edges: tuple[float, ...]):
    r = _radial_frequency(H, W).ravel()
    idx = (np.searchsorted(np.asarray(edges[1:-1]), r, side="right")).astype(np.int64)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    for a in (idx, counts):
        a.setflags(write=False)
    return idx, counts


def _bands_of(shape, bands):
    names, edges = _validate_bands(bands)
    idx, counts = _band_index(int(shape[-2]), int(shape[-1]), edges)
    return names, idx, counts


def band_masks(shape, *, bands=DEFAULT_BANDS) -> np.ndarray:
    """Boolean masks of the FFT bins in each band.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(..., H, W)``; only the last two entries are used.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands ``{name: (lo, hi)}`` in cycles/pixel that
        partition the radial frequencies (see the module notes).  Default
        :data:`DEFAULT_BANDS`.

    Returns
    -------
    masks : ndarray of bool, shape (n_bands, H, W)
        ``masks[i]`` selects the bins with ``lo_i <= |f| < hi_i`` in the
        unshifted FFT layout; the masks are disjoint and cover every bin.  The
        band axis follows the order of ``bands``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[-1] < 1 or shape[-2] < 1:
        raise ValueError(f"shape must be (..., H, W) with H, W >= 1, got {shape}")
    names, idx, _ = _bands_of(shape, bands)
    H, W = shape[-2:]
    return (idx[None, :] == np.arange(len(names))[:, None]).reshape(len(names), H, W)


def _band_energy(xp, x, bands, window=None):
    """Band energies of x (..., H, W) -> (..., n_bands) in the accumulation dtype."""
    names, idx, _ = _bands_of(x.shape, bands)
    P = _power(xp, xp.fft2(_apply_window(xp, x, window)))
    return xp.bin_sum(_flat(P), idx, len(names))


def band_energy(images, *, bands=DEFAULT_BANDS, window=None):
    """Energy of each image in each frequency band.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands ``{name: (lo, hi)}`` in cycles/pixel of radial
        frequency; default :data:`DEFAULT_BANDS`.
    window : None, str or tuple, optional
        Window applied before the transform, see :func:`power_spectrum`.

    Returns
    -------
    energy : ndarray or torch.Tensor, shape (..., n_bands)
        Sum of :func:`power_spectrum` over the bins of each band, in the order
        of ``bands`` (``list(bands)`` names the last axis).

    Notes
    -----
    The bands partition the spectrum, so without a window the band energies
    sum to the image energy ``(images ** 2).sum(axis=(-2, -1))``, and each
    equals the energy of the corresponding :func:`band_pass` image (Parseval).
    The DC term (the image mean) belongs to the first band.
    """
    xp, x = _prepare(images)
    return xp.cast(_band_energy(xp, x, bands, window), x.dtype)


def band_pass(images, *, bands=DEFAULT_BANDS):
    """Split each image into band-pass images, one per frequency band.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands ``{name: (lo, hi)}`` in cycles/pixel of radial
        frequency; default :data:`DEFAULT_BANDS`.

    Returns
    -------
    parts : ndarray or torch.Tensor, shape (..., n_bands, H, W)
        ``parts[..., i, :, :]`` is the inverse FFT of the image's spectrum
        restricted to band ``i`` (an ideal, radially symmetric filter); band
        order follows ``bands``.

    Notes
    -----
    The bands partition the spectrum, so ``parts.sum(axis=-3)`` equals the
    images (to rounding), and the energy of ``parts[..., i, :, :]`` equals
    ``band_energy(images)[..., i]``.  Band masks are symmetric under
    ``f -> -f``, so the parts are real.  Ideal filters ring (Gibbs): a sharp
    edge leaves ripples in the band-pass images that cancel in their sum.
    """
    xp, x = _prepare(images)
    names, idx, _ = _bands_of(x.shape, bands)
    H, W = int(x.shape[-2]), int(x.shape[-1])
    masks = (idx[None, :] == np.arange(len(names))[:, None]).reshape(len(names), H, W)
    F = xp.fft2(x)
    parts = xp.ifft2(F[..., None, :, :] * xp.const(masks, dtype=x.dtype, like=x)).real
    return xp.cast(parts, x.dtype)


# ----------------------------------------------------------------------------
# Convergence against a reference
# ----------------------------------------------------------------------------


def _total_energy(xp, x):
    return xp.sum(xp.acc(x) ** 2, (-2, -1))


def band_relative_error(images, reference, *, bands=DEFAULT_BANDS):
    """Relative squared error of each band against a reference image.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Images to compare, e.g. the predicted clean image at every step,
        shape ``(sample, step, channel, H, W)``.
    reference : array_like or torch.Tensor, shape (..., H, W)
        Reference images (e.g. the final image); the leading dimensions
        broadcast against those of ``images`` (e.g. ``(sample, 1, channel, H,
        W)``).  Same backend and image size as ``images``.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands in cycles/pixel; default :data:`DEFAULT_BANDS`.

    Returns
    -------
    error : ndarray or torch.Tensor, shape (..., n_bands)
        ``||b_i(images) - b_i(reference)||**2 / ||b_i(reference)||**2``, where
        ``b_i`` is the :func:`band_pass` image of band ``i``; ``...`` is the
        broadcast of the leading dimensions.

    Notes
    -----
    Computed in the Fourier domain (the ratio of :func:`band_energy` of
    ``images - reference`` to that of ``reference``), without inverse FFTs.

    Band energies below ``eps * (E(images) + E(reference))`` (``eps`` the
    machine epsilon of the dtype, ``E`` the total energy) are FFT rounding
    noise and are treated as exactly 0.  Where the reference band is empty the
    error is 0 if the images agree with the reference in that band and
    ``inf`` otherwise, so the result never holds ``nan``.
    """
    xp, x, r = _prepare_pair(images, reference)
    Ed = _band_energy(xp, x - r, bands)
    Er = _band_energy(xp, r, bands)
    tiny = (xp.eps(x.dtype) * (_total_energy(xp, x) + _total_energy(xp, r)))[..., None]
    zero_d, zero_r = Ed <= tiny, Er <= tiny
    ratio = Ed / xp.where(zero_r, 1.0, Er)
    err = xp.where(zero_r, xp.where(zero_d, 0.0, math.inf), ratio)
    return xp.cast(err, x.dtype)


def band_correlation(images, reference, *, bands=DEFAULT_BANDS):
    """Pearson correlation of band-pass images with those of a reference.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Images to compare.
    reference : array_like or torch.Tensor, shape (..., H, W)
        Reference images; leading dimensions broadcast against ``images``.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands in cycles/pixel; default :data:`DEFAULT_BANDS`.

    Returns
    -------
    corr : ndarray or torch.Tensor, shape (..., n_bands)
        Pearson correlation, over the ``H * W`` pixels, of the band-``i``
        :func:`band_pass` image of ``images`` with that of ``reference``, in
        ``[-1, 1]``.  Defined as 0 where either band-pass image is constant.

    Notes
    -----
    Computed in the Fourier domain: by Parseval the covariance of two band-pass
    images is ``sum Re(X conj(R))`` over the band's bins with the DC bin (the
    mean) left out.  A band-pass image is treated as constant when its variance
    energy is below ``eps`` times the total energy of its image (``eps`` the
    machine epsilon of the dtype): FFT rounding noise does not produce spurious
    correlations.  Unlike :func:`band_relative_error`, the correlation ignores
    the amplitude of a band.
    """
    xp, x, r = _prepare_pair(images, reference)
    names, idx, _ = _bands_of(x.shape, bands)
    n = len(names)
    idx = idx.copy()
    idx[0] = n  # drop the DC bin: Pearson correlation removes the mean
    X, R = xp.fft2(x), xp.fft2(r)
    Sxr = xp.bin_sum(_flat(X.real * R.real + X.imag * R.imag), idx, n)
    Sxx = xp.bin_sum(_flat(_power(xp, X)), idx, n)
    Srr = xp.bin_sum(_flat(_power(xp, R)), idx, n)
    eps = xp.eps(x.dtype)
    const_x = Sxx <= (eps * _total_energy(xp, x))[..., None]
    const_r = Srr <= (eps * _total_energy(xp, r))[..., None]
    const = const_x | const_r
    den = xp.sqrt(xp.where(const_x, 1.0, Sxx) * xp.where(const_r, 1.0, Srr))
    corr = xp.where(const, 0.0, xp.clip(Sxr / den, -1.0, 1.0))
    return xp.cast(corr, x.dtype)


# ----------------------------------------------------------------------------
# Signal-to-noise ratio per band
# ----------------------------------------------------------------------------


def _alphas(xp, alphas, like, name, *, one_dim: bool):
    a = np.asarray(alphas.detach().cpu() if _is_tensor(alphas) else alphas, dtype=np.float64)
    if one_dim and a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, shape (T,), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all((a >= 0) & (a <= 1)):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
    return xp.const(a, dtype=xp.acc_dtype(like), like=like)


def scheduler_band_snr(reference, *, alphas_cumprod, bands=DEFAULT_BANDS):
    """Signal-to-noise ratio per band of ``x_t`` implied by a noise schedule.

    Parameters
    ----------
    reference : array_like or torch.Tensor, shape (..., H, W)
        Clean images ``x_0`` (in the space where noise is added: latents for a
        latent diffusion model).
    alphas_cumprod : array_like, shape (T,)
        ``alpha_bar_t`` for the timesteps of interest, in ``[0, 1]``, e.g.
        ``scheduler.alphas_cumprod[scheduler.timesteps]``.  Converted to the
        backend and device of ``reference``.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands in cycles/pixel; default :data:`DEFAULT_BANDS`.

    Returns
    -------
    snr : ndarray or torch.Tensor, shape (..., T, n_bands)
        ``SNR_i(t) = alpha_bar_t * C_i / (1 - alpha_bar_t)``; ``inf`` where
        ``alpha_bar_t = 1`` (``nan`` if moreover ``C_i = 0``).

    Notes
    -----
    For ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with
    ``eps`` white noise of unit variance per pixel, the unitary FFT of ``eps``
    has expected power 1 in every bin.  In band ``i``, holding ``n_i`` bins, the
    signal power per bin is ``alpha_bar_t C_i`` where
    ``C_i = band_energy(x_0)_i / n_i`` is the mean power per bin of the clean
    image, and the expected noise power per bin is ``1 - alpha_bar_t``; their
    ratio is the SNR above.  Because natural images concentrate their power at
    low frequencies (``C_i`` decreasing with frequency) while the noise is
    flat, low bands reach a given SNR earlier in sampling than high bands [1]_.
    A band without any FFT bin at this image size raises a ``ValueError``.

    References
    ----------
    .. [1] S. Rissanen, M. Heinonen and A. Solin, "Generative modelling with
       inverse heat dissipation", ICLR 2023.
    .. [2] S. Dieleman, "Diffusion is spectral autoregression", blog post, 2024.
    """
    xp, r = _prepare(reference, "reference")
    names, idx, counts = _bands_of(r.shape, bands)
    if (counts == 0).any():
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"bands {empty} hold no FFT bin for {r.shape[-2]}x{r.shape[-1]} images, "
            "so their mean power per bin is undefined"
        )
    E = xp.bin_sum(_flat(_power(xp, xp.fft2(r))), idx, len(names))
    C = E / xp.const(counts, dtype=E.dtype, like=E)  # (..., n_bands)
    a = _alphas(xp, alphas_cumprod, r, "alphas_cumprod", one_dim=True)[:, None]  # (T, 1)
    num = a * C[..., None, :]  # (..., T, n_bands): signal power per bin
    den = 1.0 - a  # (T, 1): noise power per bin
    noisy = den > 0
    snr = xp.where(noisy, num / xp.where(noisy, den, 1.0),
                   xp.where(num > 0, math.inf, math.nan))
    return xp.cast(snr, r.dtype)


def measured_band_snr(x_t, x0, *, alpha_cumprod, bands=DEFAULT_BANDS):
    """Signal-to-noise ratio per band measured on noisy images.

    Parameters
    ----------
    x_t : array_like or torch.Tensor, shape (..., H, W)
        Noisy images.
    x0 : array_like or torch.Tensor, shape (..., H, W)
        The clean images they were made from; leading dimensions broadcast
        against those of ``x_t``.
    alpha_cumprod : float or array_like
        ``alpha_bar_t`` of each noisy image, in ``[0, 1]``; a scalar or an array
        that broadcasts against the leading dimensions ``x_t.shape[:-2]`` (e.g.
        ``alphas[:, None]`` for ``x_t`` of shape ``(step, channel, H, W)``).
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands in cycles/pixel; default :data:`DEFAULT_BANDS`.

    Returns
    -------
    snr : ndarray or torch.Tensor, shape (..., n_bands)
        ``E_i(s) / E_i(x_t - s)`` with ``s = sqrt(alpha_bar_t) x0`` the signal
        part and ``E_i`` the :func:`band_energy` of band ``i``.

    Notes
    -----
    For ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` the noise energy
    in band ``i`` has expectation ``(1 - alpha_bar) n_i`` (``n_i`` bins), so the
    measured SNR estimates :func:`scheduler_band_snr`.  Energies below ``eps``
    times the total energy of signal plus noise are treated as 0: an empty
    noise band gives ``inf``, and ``nan`` if the signal band is empty too.
    """
    xp, xt, x0_ = _prepare_pair(x_t, x0, names=("x_t", "x0"))
    a = _alphas(xp, alpha_cumprod, xt, "alpha_cumprod", one_dim=False)
    try:
        np.broadcast_shapes(tuple(a.shape), tuple(xt.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"alpha_cumprod of shape {tuple(a.shape)} does not broadcast against the "
            f"leading dimensions {tuple(xt.shape[:-2])} of x_t"
        ) from None
    s = xp.cast(xp.sqrt(a)[..., None, None], xt.dtype) * x0_  # signal part
    noise = xt - s
    Es = _band_energy(xp, s, bands)
    En = _band_energy(xp, noise, bands)
    tiny = (xp.eps(xt.dtype) * (_total_energy(xp, s) + _total_energy(xp, noise)))[..., None]
    zs, zn = Es <= tiny, En <= tiny
    snr = xp.where(zn, xp.where(zs, math.nan, math.inf), Es / xp.where(zn, 1.0, En))
    return xp.cast(snr, xt.dtype)


# ----------------------------------------------------------------------------
# Wavelets
# ----------------------------------------------------------------------------


def _get_wavelet(wavelet):
    import pywt

    if isinstance(wavelet, pywt.Wavelet):
        return wavelet
    if not isinstance(wavelet, str):
        raise TypeError(
            f"wavelet must be a name such as 'haar' or a pywt.Wavelet, got "
            f"{type(wavelet).__name__}"
        )
    discrete = pywt.wavelist(kind="discrete")
    if wavelet in discrete:
        return pywt.Wavelet(wavelet)
    if wavelet in pywt.wavelist(kind="continuous"):
        raise ValueError(
            f"{wavelet!r} is a continuous wavelet; a discrete one is needed "
            "(e.g. 'haar', 'db2', 'sym4')"
        )
    close = difflib.get_close_matches(wavelet, discrete, n=5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown wavelet {wavelet!r}{hint} (pywt.wavelist(kind='discrete') lists "
        "them all)"
    )


def _wavelet_setup(images, wavelet, level, mode):
    import pywt

    xp, x = _prepare(images)
    wav = _get_wavelet(wavelet)
    if mode not in pywt.Modes.modes:
        close = difflib.get_close_matches(str(mode), pywt.Modes.modes, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown signal extension mode {mode!r}{hint}; one of {pywt.Modes.modes}"
        )
    H, W = int(x.shape[-2]), int(x.shape[-1])
    max_level = pywt.dwt_max_level(min(H, W), wav.dec_len)
    if level is None:
        if max_level < 1:
            raise ValueError(
                f"{H}x{W} images are too small for one level of the {wav.name!r} "
                f"wavelet (filter length {wav.dec_len})"
            )
        level = max_level
    elif isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 1:
        raise ValueError(f"level must be a positive integer, got {level!r}")
    elif level > max_level:
        raise ValueError(
            f"level={level} is too high for {H}x{W} images with the {wav.name!r} "
            f"wavelet (filter length {wav.dec_len}): at most {max_level}"
        )
    xn = xp.to_numpy(x) if xp.is_torch else x
    return xp, x, xn, wav, int(level)


@dataclass(frozen=True, eq=False)
class WaveletEnergy:
    """Energy of the subbands of a 2-D discrete wavelet transform.

    Attributes
    ----------
    approximation : ndarray or torch.Tensor, shape (...,)
        Energy of the approximation coefficients at the coarsest level.
    details : ndarray or torch.Tensor, shape (..., level, 3)
        Energy of the detail coefficients; ``details[..., j - 1, :]`` is level
        ``j`` (level 1 = finest, highest frequencies) and the last axis is the
        orientation ``(horizontal, vertical, diagonal)`` as in PyWavelets.
    wavelet : str
        Wavelet name.
    level : int
        Number of decomposition levels.
    mode : str
        Signal extension mode.
    """

    approximation: Any
    details: Any
    wavelet: str
    level: int
    mode: str

    @property
    def total(self):
        """Total energy, shape (...,): approximation plus all details."""
        return self.approximation + self.details.sum(-1).sum(-1)

    def relative(self) -> WaveletEnergy:
        """Energies as fractions of :attr:`total` (0 for an all-zero image)."""
        total = self.total
        safe = total + (total == 0)  # 1 where the total is 0: fractions are then 0
        return WaveletEnergy(
            approximation=self.approximation / safe,
            details=self.details / safe[..., None, None],
            wavelet=self.wavelet,
            level=self.level,
            mode=self.mode,
        )


def wavelet_energy(images, *, wavelet="haar", level=None, mode="periodization") -> WaveletEnergy:
    """Energy of each image in each wavelet subband.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images.
    wavelet : str or pywt.Wavelet, optional
        A discrete wavelet (``pywt.wavelist(kind="discrete")``); default ``"haar"``.
    level : int, optional
        Number of levels; default (and maximum) ``pywt.dwt_max_level(min(H, W),
        filter_length)``.
    mode : str, optional
        Signal extension mode (``pywt.Modes.modes``); default ``"periodization"``.

    Returns
    -------
    energy : WaveletEnergy
        ``approximation`` (...,) and ``details`` (..., level, 3), sums of squared
        coefficients, on the input's backend and device.

    Notes
    -----
    Computed with :func:`pywt.wavedec2` over ``axes=(-2, -1)``, which returns
    ``[cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)]`` (coarsest first);
    ``details`` reverses this so that index ``j - 1`` is level ``j``, the finest
    first.  ``cH`` is high-pass along the rows' axis (y): it responds to
    horizontal edges.

    For an orthogonal wavelet (``haar``, ``dbN``, ``symN``, ``coifN``) with
    ``mode="periodization"`` and ``H``, ``W`` divisible by ``2**level`` the
    transform is orthogonal, so the energies sum to the image energy
    (Parseval).  Other modes add boundary coefficients and biorthogonal
    wavelets are not energy-preserving; the energies are then only indicative.

    Tensors with ``mode="periodization"`` (the default) are transformed on
    their own device by :func:`denoisefeat.dwt.wavedec2_periodization` (equal
    to PyWavelets, batched, differentiable); with other modes PyWavelets
    works on NumPy arrays: tensors are detached and copied to the host, and
    the result is returned on the input's device (not differentiable).

    References
    ----------
    .. [1] S. Mallat, "A theory for multiresolution signal decomposition: the
       wavelet representation", IEEE TPAMI 11(7), 1989.
    """
    import pywt

    xp, x, xn, wav, level = _wavelet_setup(images, wavelet, level, mode)
    if xp.is_torch and mode == "periodization" and wav.name in pywt.wavelist(kind="discrete"):
        return _wavelet_energy_torch(x, wav.name, level)
    coeffs = pywt.wavedec2(xn, wav, mode=mode, level=level, axes=(-2, -1))

    def energy(c):
        return np.sum(np.square(c, dtype=np.float64), axis=(-2, -1))

    approx = energy(coeffs[0])
    details = np.stack(
        [np.stack([energy(c) for c in coeffs[-j]], axis=-1) for j in range(1, level + 1)],
        axis=-2,
    )
    dtype = xn.dtype
    approx, details = approx.astype(dtype), details.astype(dtype)
    if xp.is_torch:
        approx, details = xp.from_numpy(approx, like=x), xp.from_numpy(details, like=x)
    return WaveletEnergy(
        approximation=approx, details=details, wavelet=wav.name, level=level, mode=mode
    )


def _wavelet_energy_torch(x, wavelet: str, level: int) -> WaveletEnergy:
    """:func:`wavelet_energy` of a tensor with ``mode="periodization"``, on its device (differentiable)."""
    from denoisefeat.dwt import wavedec2_periodization

    coeffs = wavedec2_periodization(x, wavelet=wavelet, level=level)
    acc = _TorchNS().acc

    def energy(c):
        return acc(c).square().sum(dim=(-2, -1)).to(x.dtype)

    details = [_TorchNS().torch.stack([energy(c) for c in coeffs[-j]], dim=-1) for j in range(1, level + 1)]
    return WaveletEnergy(approximation=energy(coeffs[0]), details=_TorchNS().torch.stack(details, dim=-2),
                         wavelet=wavelet, level=level, mode="periodization")


def wavelet_band_pass(images, *, wavelet="haar", level=None, mode="periodization"):
    """Split each image into one image per wavelet level.

    Parameters
    ----------
    images : array_like or torch.Tensor, shape (..., H, W)
        Real images.
    wavelet : str or pywt.Wavelet, optional
        A discrete wavelet; default ``"haar"``.
    level : int, optional
        Number of levels; default the maximum, see :func:`wavelet_energy`.
    mode : str, optional
        Signal extension mode; default ``"periodization"``.

    Returns
    -------
    parts : ndarray or torch.Tensor, shape (..., level + 1, H, W)
        ``parts[..., j - 1, :, :]`` is the image reconstructed from the detail
        coefficients of level ``j`` alone (all three orientations; level 1 =
        finest), and ``parts[..., level, :, :]`` the one reconstructed from the
        approximation coefficients, i.e. from fine to coarse.

    Notes
    -----
    The inverse transform is linear, so for a perfect-reconstruction wavelet
    ``parts.sum(axis=-3)`` equals the images.  Reconstructions are cropped to
    ``H x W`` (some modes and odd sizes reconstruct a larger array).  Tensors
    are processed on the host, see :func:`wavelet_energy`.
    """
    import pywt

    xp, x, xn, wav, level = _wavelet_setup(images, wavelet, level, mode)
    H, W = xn.shape[-2:]
    coeffs = pywt.wavedec2(xn, wav, mode=mode, level=level, axes=(-2, -1))
    zeros = [np.zeros_like(coeffs[0])] + [tuple(np.zeros_like(c) for c in d) for d in coeffs[1:]]

    def rec(keep: int):
        cs = list(zeros)
        cs[keep] = coeffs[keep]
        out = pywt.waverec2(cs, wav, mode=mode, axes=(-2, -1))
        return out[..., :H, :W]

    # coeffs[-j] is detail level j; coeffs[0] the approximation
    parts = np.stack([rec(len(coeffs) - j) for j in range(1, level + 1)] + [rec(0)], axis=-3)
    parts = parts.astype(xn.dtype, copy=False)
    return xp.from_numpy(parts, like=x) if xp.is_torch else parts
