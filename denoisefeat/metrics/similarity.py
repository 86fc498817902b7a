"""Full-reference similarity of image batches: SSIM, MS-SSIM, PSNR and per-band SSIM.

All functions compare a batch of images ``(..., C, H, W)`` with a reference
whose leading dimensions broadcast against the batch (typically images
``(sample, step, C, H, W)`` against the final images ``(sample, 1, C, H,
W)``) and return one value per image, shape ``(...)`` (``(..., n_bands)`` for
:func:`band_ssim`).

The SSIM family is vectorised: the local statistics are the separable filters
of scikit-image's SSIM (uniform or Gaussian, reflected borders) over the last
two axes of the whole batch, written as two small matrix products for small
images and as :mod:`scipy.ndimage` filters above; the reference's own
statistics are computed once per reference image, not once per (image,
reference) pair.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from denoisefeat.metrics._common import as_float_result, check_data_range, prepare_pair

__all__ = ["ssim", "ms_ssim", "psnr", "band_ssim", "MS_SSIM_WEIGHTS"]

#: Scale weights of MS-SSIM (Wang, Simoncelli & Bovik 2003, Table 1), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# Constants of Wang et al. (2004), as in skimage.metrics.structural_similarity.
_K1, _K2 = 0.01, 0.03
# Gaussian window of Wang et al. (2004): sigma 1.5, 11 taps (truncate 3.5).
_SIGMA, _TRUNCATE = 1.5, 3.5


def resolve_window(win_size, gaussian_weights: bool, *, metric: str) -> int:
    if win_size is None:
        return 2 * int(_TRUNCATE * _SIGMA + 0.5) + 1 if gaussian_weights else 7
    if isinstance(win_size, bool) or int(win_size) != win_size or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"{metric}: win_size must be a positive odd integer, got {win_size!r}")
    return int(win_size)


def check_extent(shape_hw, win_size: int, *, metric: str) -> None:
    if min(shape_hw) < win_size:
        raise ValueError(
            f"{metric}: win_size={win_size} exceeds the image extent {tuple(shape_hw)}; "
            "pass a smaller odd win_size"
        )


# Up to this image side the windowed means are two small dense matrix
# products (the 1-D filters, boundary handling included, written as matrices):
# 2-10 times faster than scipy.ndimage for small images (the dense product
# costs O(side) per pixel, so the uniform window stops paying off sooner).
# Above it, scipy.ndimage's separable filters.
_MATRIX_MAX_SIDE = {False: 64, True: 128}  # by gaussian_weights


def _filter1d(a, gaussian_weights, win_size, axis):
    if gaussian_weights:
        return ndi.gaussian_filter1d(a, sigma=_SIGMA, truncate=_TRUNCATE, axis=axis, mode="reflect")
    return ndi.uniform_filter1d(a, size=win_size, axis=axis, mode="reflect")


@functools.lru_cache(maxsize=64)
def _filter_matrix(n: int, gaussian_weights: bool, win_size: int) -> np.ndarray:
    """Rows ``pad .. n - pad`` of the matrix ``A`` with ``filter1d(x) = A @ x`` (reflected)."""
    pad = (win_size - 1) // 2
    a = _filter1d(np.eye(n), gaussian_weights, win_size, axis=0)[pad : n - pad]
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _local_mean(a: np.ndarray, gaussian_weights: bool, win_size: int) -> np.ndarray:
    """Windowed mean over the last two axes, cropped by ``(win_size - 1) // 2`` on each side.

    The filters are those of scikit-image's SSIM (reflected borders):
    :func:`scipy.ndimage.uniform_filter` or :func:`scipy.ndimage.gaussian_filter`
    (sigma 1.5, truncate 3.5), applied separably along the last two axes.
    """
    H, W = a.shape[-2:]
    if max(H, W) <= _MATRIX_MAX_SIDE[bool(gaussian_weights)]:
        ah = _filter_matrix(H, gaussian_weights, win_size)
        aw = _filter_matrix(W, gaussian_weights, win_size)
        return np.matmul(np.matmul(ah, a), aw.T)
    pad = (win_size - 1) // 2
    out = _filter1d(_filter1d(a, gaussian_weights, win_size, -2), gaussian_weights, win_size, -1)
    return out[..., pad : H - pad, pad : W - pad]


def ssim_means(x, y, *, data_range, win_size, gaussian_weights):
    """Mean SSIM and mean contrast-structure term per plane.

    ``x`` (..., H, W) and ``y`` (..., H, W) broadcast; returns two arrays of the
    broadcast leading shape: the mean of ``l * cs`` and the mean of ``cs`` over
    the valid region (pixels at least ``(win_size - 1) // 2`` from the border).
    """
    f = lambda a: _local_mean(a, gaussian_weights, win_size)  # noqa: E731
    # The reference's statistics are computed on its own (unbroadcast) shape.
    ux, uy = f(x), f(y)
    uxx, uyy = f(x * x), f(y * y)
    uxy = f(x * y)
    n_px = win_size**2
    cov_norm = n_px / (n_px - 1)  # sample covariance, as scikit-image's default
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return (lum * cs).mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def ssim(images, reference, *, data_range, channel_axis=-3, win_size=None, gaussian_weights=False):
    """Mean structural similarity (SSIM) of each image against a reference.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Image batch (any real dtype; computed in float64).
    reference : array_like, shape (..., C, H, W)
        Reference images; the leading dimensions broadcast against those of
        ``images`` (e.g. images ``(S, T, C, H, W)``, reference ``(S, 1, C, H, W)``).
    data_range : float
        Distance between the largest and smallest possible pixel values
        (1.0 for images in [0, 1]).  Required: it is never guessed.
    channel_axis : int or None, optional
        Axis of the channels (default -3).  ``None`` for grey images of shape
        ``(..., H, W)``.
    win_size : odd int, optional
        Side of the window.  Default 7 for the uniform window and 11 for the
        Gaussian one (which is then used only to crop the border and for the
        covariance normalisation, exactly as in scikit-image).
    gaussian_weights : bool, optional
        Use a Gaussian window (sigma 1.5, truncated at 3.5 sigma) instead of a
        uniform one, as in Wang et al. (2004).

    Returns
    -------
    ssim : ndarray of float64, shape (...)
        Mean SSIM over the pixels at least ``(win_size - 1) / 2`` from the
        border, averaged over channels; ``...`` is the broadcast leading shape.
        Range [-1, 1]; higher = closer to the reference; 1 for identical images.

    Raises
    ------
    ValueError
        If an input contains NaN or inf, ``data_range`` is not positive, the
        window exceeds the image, or the shapes do not broadcast.

    Notes
    -----
    Equal (to rounding) to
    ``skimage.metrics.structural_similarity(im, ref, data_range=data_range,
    channel_axis=0, win_size=win_size, gaussian_weights=gaussian_weights)``
    applied to each image with float64 inputs (K1 = 0.01, K2 = 0.03, sample
    covariance, reflected borders), but computed for the whole batch at once.

    Constant images are well defined through the stabilising constants
    ``C1 = (0.01 R)**2`` and ``C2 = (0.03 R)**2``: two identical constant
    images give 1; constant images of different values give the luminance
    term ``(2 a b + C1) / (a**2 + b**2 + C1)``.

    References
    ----------
    .. [1] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image
       quality assessment: from error visibility to structural similarity",
       IEEE Trans. Image Process. 13(4), 600-612 (2004).
       :DOI:`10.1109/TIP.2003.819861`
    """
    metric = "ssim"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    r = check_data_range(data_range, metric=metric)
    w = resolve_window(win_size, gaussian_weights, metric=metric)
    check_extent(x.shape[-2:], w, metric=metric)
    s, _ = ssim_means(x, y, data_range=r, win_size=w, gaussian_weights=gaussian_weights)
    return as_float_result(s.mean(axis=-1))


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 average pooling over the last two axes (an odd last row/column is dropped)."""
    H, W = a.shape[-2] // 2, a.shape[-1] // 2
    a = a[..., : 2 * H, : 2 * W]
    return a.reshape(a.shape[:-2] + (H, 2, W, 2)).mean(axis=(-3, -1))


def ms_ssim(
    images,
    reference,
    *,
    data_range,
    channel_axis=-3,
    weights=MS_SSIM_WEIGHTS,
    win_size=None,
    gaussian_weights=True,
):
    """Multi-scale structural similarity (MS-SSIM) of each image against a reference.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Image batch.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    data_range : float
        Distance between the largest and smallest possible pixel values.
        Required.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.
    weights : sequence of float, optional
        Exponent of each scale, finest first; default the five weights of
        Wang et al. (2003), :data:`MS_SSIM_WEIGHTS`.
    win_size : odd int, optional
        Window side, default 11 (Gaussian) or 7 (uniform), as in :func:`ssim`.
    gaussian_weights : bool, optional
        Gaussian window (sigma 1.5), the default as in the paper.

    Returns
    -------
    ms_ssim : ndarray of float64, shape (...)
        Range [0, 1]; higher = closer to the reference; 1 for identical images.

    Notes
    -----
    Scale 1 is the image itself; each further scale is a 2x2 average pooling
    of the previous one (an odd row or column is dropped).  With ``n`` scales,

        ``MS-SSIM = prod_{j < n} cs_j ** w_j * ssim_n ** w_n``

    where ``cs_j`` is the mean contrast-structure term at scale ``j`` and
    ``ssim_n`` the mean SSIM (luminance included) at the coarsest scale, per
    channel, then averaged over channels.  Negative means are clipped to 0
    before exponentiation, so the result lies in [0, 1] and is never NaN.

    **Minimum size and small images.**  A scale is used only if its smaller
    side is at least ``win_size``.  The full five scales need images of at
    least ``win_size * 2**4`` pixels (176 px with the default Gaussian
    window).  Smaller images use the first ``n`` scales that fit and the
    first ``n`` weights, renormalised to sum to 1: a 32 px image uses
    ``n = 2`` scales (32 and 16 px) with weights ``(0.0448, 0.2856) / 0.3304``,
    a 64 px image ``n = 3``.  Images smaller than ``win_size`` raise
    ``ValueError``.  Values are therefore comparable only between images of
    the same size.

    References
    ----------
    .. [1] Z. Wang, E. P. Simoncelli and A. C. Bovik, "Multiscale structural
       similarity for image quality assessment", Proc. 37th Asilomar
       Conference on Signals, Systems and Computers, 1398-1402 (2003).
       :DOI:`10.1109/ACSSC.2003.1292216`
    """
    metric = "ms_ssim"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    r = check_data_range(data_range, metric=metric)
    w = resolve_window(win_size, gaussian_weights, metric=metric)
    check_extent(x.shape[-2:], w, metric=metric)
    wts = np.asarray(weights, dtype=np.float64)
    if (
        wts.ndim != 1
        or wts.size == 0
        or not np.all(np.isfinite(wts))
        or np.any(wts < 0)
        or wts.sum() <= 0
    ):
        raise ValueError(
            f"{metric}: weights must be a non-empty sequence of non-negative numbers, "
            f"got {weights!r}"
        )
    n = 1
    while n < wts.size and min(x.shape[-2:]) // 2**n >= w:
        n += 1
    wts = wts[:n] / wts[:n].sum()
    log_prod = 0.0
    for j in range(n):
        s, cs = ssim_means(x, y, data_range=r, win_size=w, gaussian_weights=gaussian_weights)
        term = s if j == n - 1 else cs
        with np.errstate(divide="ignore"):
            log_prod = log_prod + wts[j] * np.log(np.clip(term, 0.0, None))
        if j < n - 1:
            x, y = _downsample2(x), _downsample2(y)
    return as_float_result(np.exp(log_prod).mean(axis=-1))


def psnr(images, reference, *, data_range, channel_axis=-3):
    """Peak signal-to-noise ratio of each image against a reference, in dB.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Image batch.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    data_range : float
        Distance between the largest and smallest possible pixel values.
        Required.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    psnr : ndarray of float64, shape (...)
        ``10 log10(data_range**2 / MSE)``.  Range (-inf, +inf]; for images
        within the data range it is >= 0.  Higher = closer to the reference.
        **Identical images give +inf** (no warning), as in scikit-image:
        the value is not capped, so a step that reproduces the final image
        exactly reads +inf; clip it where a finite number is needed.

    Notes
    -----
    Equal to ``skimage.metrics.peak_signal_noise_ratio(ref, im,
    data_range=data_range)`` per image (float64 inputs).

    References
    ----------
    .. [1] https://en.wikipedia.org/wiki/Peak_signal-to-noise_ratio
    """
    metric = "psnr"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    r = check_data_range(data_range, metric=metric)
    mse = ((x - y) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return as_float_result(10.0 * np.log10(r * r / mse))


def band_ssim(
    images,
    reference,
    *,
    data_range,
    bands=None,
    channel_axis=-3,
    win_size=None,
    gaussian_weights=False,
):
    """SSIM of the band-pass images of each frequency band.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Image batch.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    data_range : float
        Data range of the *images* (1.0 for images in [0, 1]).  Required.
        It sets the SSIM constants of every band, see Notes.
    bands : mapping of str to (float, float), optional
        Ordered, contiguous bands ``{name: (lo, hi)}`` in cycles/pixel, as in
        :func:`denoisefeat.frequency.band_pass`; default
        :data:`denoisefeat.frequency.DEFAULT_BANDS` (low, mid, high).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.
    win_size, gaussian_weights : optional
        SSIM window, as in :func:`ssim`.

    Returns
    -------
    band_ssim : ndarray of float64, shape (..., n_bands)
        SSIM per band, in the order of ``bands``.  Range [-1, 1]; higher =
        closer to the reference; 1 for identical images.

    Notes
    -----
    Each image and the reference are split by
    :func:`denoisefeat.frequency.band_pass` (ideal radial FFT filters) on the
    last two axes and :func:`ssim` compares the band images.

    **data_range of band-pass images.**  Band-pass images of images in
    ``[0, R]`` are zero-mean (except the band holding DC) and lie roughly in
    ``[-R, R]``.  We keep ``data_range = R`` for every band, so that the
    stabilising constants ``C1 = (0.01 R)**2`` and ``C2 = (0.03 R)**2`` have
    the same absolute size in every band as in the SSIM of the images: band
    structure whose local standard deviation is well below ``0.03 R`` in both
    images counts as agreeing (a band that is empty in both gives 1).  Bands
    are therefore judged on the same absolute contrast scale, not normalised
    by their own energy.

    References
    ----------
    .. [1] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli (2004),
       see :func:`ssim`.
    """
    from denoisefeat.frequency import DEFAULT_BANDS, band_pass

    metric = "band_ssim"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    r = check_data_range(data_range, metric=metric)
    w = resolve_window(win_size, gaussian_weights, metric=metric)
    check_extent(x.shape[-2:], w, metric=metric)
    bands = DEFAULT_BANDS if bands is None else bands
    # (..., C, n_bands, H, W) -> (..., n_bands, C, H, W)
    xb = np.moveaxis(np.asarray(band_pass(x, bands=bands), dtype=np.float64), -3, -4)
    yb = np.moveaxis(np.asarray(band_pass(y, bands=bands), dtype=np.float64), -3, -4)
    s, _ = ssim_means(xb, yb, data_range=r, win_size=w, gaussian_weights=gaussian_weights)
    return as_float_result(s.mean(axis=-1))
