"""Batched 2-D discrete wavelet transform in torch, periodized, equal to PyWavelets'.

:func:`wavedec2_periodization` is ``pywt.wavedec2(x, wavelet, mode="periodization",
level=level, axes=(-2, -1))`` for tensors: it runs on the tensor's device, batches over the
leading axes and is differentiable (the transform is linear).

How it stays equal to PyWavelets: the one-level 1-D transform of a length-``n`` signal is a
linear map, so its matrix is read off PyWavelets itself (``pywt.dwt`` of the identity, cached
per ``(wavelet, n)``).  For even ``n`` the periodized transform is a circular filter followed by
keeping every second sample, so the map is applied as a few rolled, strided sums (one per filter
tap: 2 for ``haar``, 4 for ``db2``), which costs O(taps) per pixel; for odd ``n`` (which
PyWavelets extends by one sample) the dense matrix is applied.  Either way the filter taps,
their alignment and the odd-length rule are PyWavelets', not re-derived here.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["wavedec2_periodization"]


@functools.lru_cache(maxsize=128)
def _analysis_matrices(wavelet: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) matrices (m, n) of the periodized one-level DWT of length-n signals."""
    import pywt

    lo, hi = pywt.dwt(np.eye(n), wavelet, mode="periodization", axis=0)  # (m, n) each
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


@functools.lru_cache(maxsize=128)
def _circular_taps(wavelet: str, n: int):
    """Taps ``((offset, lo, hi), ...)`` with ``out[k] = sum w * x[(2k + offset) % n]``, or None.

    None when the matrices are not a strided circular filter (odd ``n``).
    """
    lo, hi = _analysis_matrices(wavelet, n)
    if n % 2:
        return None
    taps = tuple((int(p), float(lo[0, p]), float(hi[0, p])) for p in np.nonzero((lo[0] != 0) | (hi[0] != 0))[0])
    for k in range(lo.shape[0]):  # every row is row 0 shifted by 2k: check, do not assume
        shifted_lo = np.roll(lo[0], 2 * k)
        shifted_hi = np.roll(hi[0], 2 * k)
        if not (np.array_equal(shifted_lo, lo[k]) and np.array_equal(shifted_hi, hi[k])):
            return None
    return taps


def _dwt1(x, wavelet: str, dim: int):
    """One periodized DWT level along ``dim`` (-1 or -2): (lo, hi) tensors."""
    import torch

    n = x.shape[dim]
    taps = _circular_taps(wavelet, n)
    if taps is None:
        lo, hi = (torch.as_tensor(m, dtype=x.dtype, device=x.device) for m in _analysis_matrices(wavelet, n))
        if dim == -1:
            return x @ lo.T, x @ hi.T
        return lo @ x, hi @ x
    # x[(2k + offset) % n] is the even (offset even) or odd samples rolled by offset // 2: half-size
    # strided views, rolled only for taps beyond the first pair (none for haar).
    phases = (x[..., 0::2], x[..., 1::2]) if dim == -1 else (x[..., 0::2, :], x[..., 1::2, :])
    out_lo = out_hi = None
    for offset, w_lo, w_hi in taps:
        even = phases[offset % 2]
        if offset // 2:
            even = torch.roll(even, shifts=-(offset // 2), dims=dim)
        out_lo = even * w_lo if out_lo is None else out_lo + even * w_lo
        out_hi = even * w_hi if out_hi is None else out_hi + even * w_hi
    return out_lo, out_hi


def wavedec2_periodization(x, *, wavelet: str, level: int):
    """Multilevel periodized 2-D DWT of tensors over the last two axes.

    Parameters
    ----------
    x : torch.Tensor, shape (..., H, W)
        Real floating-point images, on any device.
    wavelet : str
        A discrete PyWavelets wavelet name (e.g. ``"haar"``, ``"db2"``).
    level : int
        Number of levels (at least 1; the caller checks it against the image size).

    Returns
    -------
    list
        ``[cA_level, (cH, cV, cD)_level, ..., (cH, cV, cD)_1]``, coarsest first, as
        :func:`pywt.wavedec2`; tensors on ``x``'s device and dtype.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"level must be a positive integer, got {level!r}")
    details = []
    approx = x
    for _ in range(level):
        lo_rows, hi_rows = _dwt1(approx, wavelet, -1)  # filtered along W (axis -1)
        ll, lh = _dwt1(lo_rows, wavelet, -2)  # then along H
        hl, hh = _dwt1(hi_rows, wavelet, -2)
        # PyWavelets' names: cH is high-pass along H (axis -2), low-pass along W.
        details.append((lh, hl, hh))
        approx = ll
    return [approx, *reversed(details)]
