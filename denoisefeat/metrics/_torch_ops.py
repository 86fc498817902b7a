"""Torch building blocks of the device metrics (:mod:`denoisefeat.metrics.device`).

Each op is the batched torch twin of one step of a numpy / scikit-image reference, equal to it
at float tolerance (tests compare them): windowed means of SSIM, the colour conversions
(luminance, CIELAB, hue), CIEDE2000, medians with numpy's even-count rule, 3 x 3 binary
morphology with scipy's border rule, and Otsu thresholds with scikit-image's histogram.

Why these are written with ``torch.nn.functional`` rather than kornia: kornia is used where its
definition is the reference's (:func:`kornia.color.rgb_to_lab` implements the same sRGB →
XYZ (D65, 2°) → CIELAB formulas as :func:`skimage.color.rgb2lab`).  Its SSIM (no sample
covariance, a ``same``-padded map) and Canny (other smoothing, suppression and hysteresis)
define other numbers than the scikit-image references and its HSV returns hue in radians with
another tie rule, so those steps are written here, each a few tensor operations.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__: list[str] = []  # private module (its functions are used by denoisefeat.metrics.device)

#: ITU-R BT.709 weights of :func:`skimage.color.rgb2gray`.
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def luminance(a: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) → (..., H, W): the channel of grey images, rgb2gray of RGB ones."""
    if a.shape[-3] == 1:
        return a[..., 0, :, :]
    w = _GRAY_WEIGHTS
    return a[..., 0, :, :] * w[0] + a[..., 1, :, :] * w[1] + a[..., 2, :, :] * w[2]


@functools.lru_cache(maxsize=16)
def gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """The taps of :func:`scipy.ndimage.gaussian_filter1d` (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x / (sigma * sigma))
    return tuple(w / w.sum())


# Up to this side the filter is two products with banded matrices (BLAS, fast for small
# images); above, sums of shifted slices (``len(taps)`` multiply-adds per pixel and axis).
_MATRIX_MAX_SIDE = 128


def _band_matrix(n: int, taps: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    k = len(taps)
    m = torch.zeros(n - k + 1, n, dtype=like.dtype, device=like.device)
    w = torch.tensor(taps, dtype=like.dtype, device=like.device)
    for i in range(k):
        m.diagonal(i)[:] = w[i]
    return m


def valid_filter(a: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable filter of the last two axes with ``taps``, only where the window fits.

    Equal to the scipy filter (any border mode) cropped by the filter's radius on each side:
    the cropped pixels never see the border, which is how scikit-image's SSIM uses its filters.
    """
    k = len(taps)
    H, W = a.shape[-2:]
    if max(H, W) <= _MATRIX_MAX_SIDE:
        return _band_matrix(H, taps, a) @ a @ _band_matrix(W, taps, a).T
    if a.dtype == torch.float64 and len(set(taps)) == 1:  # a box: running sums, O(1) per pixel
        return _box_sum(_box_sum(a, k, -2), k, -1) * (taps[0] * taps[0])
    rows = sum(w * a[..., i:H - k + 1 + i, :] for i, w in enumerate(taps))
    return sum(w * rows[..., i:W - k + 1 + i] for i, w in enumerate(taps))


def _box_sum(a: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of ``k`` consecutive values along ``dim`` (valid part), from one cumulative sum.

    Used in float64 only: the differences of a float32 cumulative sum lose the small local
    variances that SSIM divides by.
    """
    c = torch.cumsum(a, dim=dim)
    n = a.shape[dim]
    head = c.narrow(dim, k - 1, 1)
    return torch.cat([head, c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)], dim=dim)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIELAB (..., 3, H, W) of sRGB (..., 3, H, W) in [0, 1], as :func:`skimage.color.rgb2lab`."""
    import kornia.color

    lead = rgb.shape[:-3]
    flat = rgb.reshape(-1, *rgb.shape[-3:])
    return kornia.color.rgb_to_lab(flat).reshape(*lead, *rgb.shape[-3:])


def rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue (..., H, W) in [0, 1) of (..., 3, H, W), as ``skimage.color.rgb2hsv(...)[..., 0]``.

    Ties of the maximum go to the last channel (blue over green over red), grey pixels get 0.
    """
    r, g, b = rgb[..., 0, :, :], rgb[..., 1, :, :], rgb[..., 2, :, :]
    v = rgb.amax(dim=-3)
    delta = v - rgb.amin(dim=-3)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.where(delta == 0, torch.zeros_like(h), h)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf or NaN) where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def safe_hypot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``hypot(x, y)`` with a 0 gradient at the origin (torch's is NaN there)."""
    return safe_sqrt(x * x + y * y)


def _polar_2pi(x: torch.Tensor, y: torch.Tensor):
    r = safe_hypot(x, y)
    origin = (x == 0) & (y == 0)  # atan2's gradient is NaN at the origin; its value there is 0
    t = torch.atan2(torch.where(origin, torch.zeros_like(y), y), torch.where(origin, torch.ones_like(x), x))
    return r, t + (t < 0) * (2 * np.pi)


def delta_e_ciede2000(lab1: torch.Tensor, lab2: torch.Tensor, *, dim: int = -3) -> torch.Tensor:
    """CIEDE2000 (kL = kC = kH = 1) of broadcasting Lab tensors, channels on ``dim``.

    The formulas and special cases of :func:`skimage.color.deltaE_ciede2000`.
    """
    L1, a1, b1 = lab1.unbind(dim)
    L2, a2, b2 = lab2.unbind(dim)
    cbar = 0.5 * (safe_hypot(a1, b1) + safe_hypot(a2, b2))
    c7 = cbar**7
    scale = 1 + 0.5 * (1 - safe_sqrt(c7 / (c7 + 25.0**7)))
    C1, h1 = _polar_2pi(a1 * scale, b1)
    C2, h2 = _polar_2pi(a2 * scale, b2)
    lbar = 0.5 * (L1 + L2)
    tmp = (lbar - 50) ** 2
    L_term = (L2 - L1) / (1 + 0.015 * tmp / torch.sqrt(20 + tmp))
    cbar = 0.5 * (C1 + C2)
    C_term = (C2 - C1) / (1 + 0.045 * cbar)
    h_diff, h_sum, cc = h2 - h1, h1 + h2, C1 * C2
    dh = h_diff - 2 * np.pi * (h_diff > np.pi) + 2 * np.pi * (h_diff < -np.pi)
    dh = torch.where(cc == 0, torch.zeros_like(dh), dh)
    dH_term = 2 * safe_sqrt(cc) * torch.sin(dh / 2)
    wrap = (cc != 0) & (h_diff.abs() > np.pi)
    hbar = h_sum + 2 * np.pi * (wrap & (h_sum < 2 * np.pi)) - 2 * np.pi * (wrap & (h_sum >= 2 * np.pi))
    hbar = 0.5 * torch.where(cc == 0, 2 * hbar, hbar)
    T = (1 - 0.17 * torch.cos(hbar - np.deg2rad(30)) + 0.24 * torch.cos(2 * hbar)
         + 0.32 * torch.cos(3 * hbar + np.deg2rad(6)) - 0.20 * torch.cos(4 * hbar - np.deg2rad(63)))
    H_term = dH_term / (1 + 0.015 * cbar * T)
    c7 = cbar**7
    rc = 2 * safe_sqrt(c7 / (c7 + 25.0**7))
    dtheta = np.deg2rad(30) * torch.exp(-(((torch.rad2deg(hbar) - 275) / 25) ** 2))
    R_term = -torch.sin(2 * dtheta) * rc * C_term * H_term
    return safe_sqrt(L_term**2 + C_term**2 + H_term**2 + R_term)


def median(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """numpy's median along ``dim``: the mean of the two middle values for an even count."""
    s, _ = torch.sort(x, dim=dim)
    n = x.shape[dim]
    return 0.5 * (s.select(dim, (n - 1) // 2) + s.select(dim, n // 2))


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """numpy's ``nanmedian`` over the last axis of ``values`` where ``mask``; NaN where empty.

    :func:`torch.nanmedian` gives the lower of the two middle values; the upper one is minus
    the lower middle value of the negated values, and numpy's median is their mean.
    """
    v = torch.where(mask, values, torch.full_like(values, torch.nan))
    return 0.5 * (torch.nanmedian(v, dim=-1).values - torch.nanmedian(-v, dim=-1).values)


def _dilate_once(m: torch.Tensor) -> torch.Tensor:
    """One 3 x 3 square dilation of boolean (n, H, W) masks, as two separable 3-tap ORs."""
    r = m.clone()
    r[:, :, 1:] |= m[:, :, :-1]
    r[:, :, :-1] |= m[:, :, 1:]
    out = r.clone()
    out[:, 1:] |= r[:, :-1]
    out[:, :-1] |= r[:, 1:]
    return out


def dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Binary dilation of (n, H, W) masks by a 3 x 3 square, ``iterations`` times (outside = 0)."""
    for _ in range(iterations):
        mask = _dilate_once(mask)
    return mask


def erode(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Binary erosion by a 3 x 3 square, ``iterations`` times; outside the image is background,
    as :func:`scipy.ndimage.binary_erosion` (``border_value=0``): the erosion of the mask is the
    complement of the dilation of its complement with the outside counted as set."""
    for _ in range(iterations):
        grown = _dilate_once(~mask)
        grown[:, 0] = grown[:, -1] = True  # the (background) outside reaches the border pixels
        grown[:, :, 0] = grown[:, :, -1] = True
        mask = ~grown
    return mask


def otsu_thresholds(planes: torch.Tensor) -> torch.Tensor:
    """Otsu thresholds (n,) of non-constant planes (n, H, W), as ``skimage.filters.threshold_otsu``.

    The same 256-bin histogram over each plane's [min, max] (:func:`numpy.histogram`'s edges and
    half-open bins, the last one closed) and the same between-class variance and first-maximum
    rule.
    """
    nb = 256
    n = planes.shape[0]
    a = planes.reshape(n, -1)
    lo, hi = a.amin(dim=1, keepdim=True), a.amax(dim=1, keepdim=True)
    step = (hi - lo) / nb
    edges = lo + torch.arange(nb + 1, dtype=a.dtype, device=a.device) * step
    edges[:, -1:] = hi
    idx = ((a - lo) / (hi - lo) * nb).to(torch.int64)
    idx = torch.where(idx == nb, idx - 1, idx)
    idx = torch.where(a < torch.gather(edges, 1, idx), idx - 1, idx)
    idx = torch.where((a >= torch.gather(edges, 1, idx + 1)) & (idx != nb - 1), idx + 1, idx)
    counts = torch.zeros(n, nb, dtype=a.dtype, device=a.device).scatter_add_(1, idx, torch.ones_like(a))
    centers = 0.5 * (edges[:, :-1] + edges[:, 1:])
    weight1 = torch.cumsum(counts, dim=1)
    weight2 = torch.flip(torch.cumsum(torch.flip(counts, (1,)), dim=1), (1,))
    moment = counts * centers
    mean1 = torch.cumsum(moment, dim=1) / weight1
    mean2 = torch.flip(torch.cumsum(torch.flip(moment, (1,)), dim=1) / torch.flip(weight2, (1,)), (1,))
    variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    return torch.gather(centers, 1, torch.argmax(variance, dim=1, keepdim=True))[:, 0]
