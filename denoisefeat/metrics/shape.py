"""Shape metrics of image batches: foreground masks, mask IoU, Hu moments, low-pass SSIM.

The foreground (object) mask of an image is its luminance thresholded by a
global automatic threshold (Otsu by default, :mod:`skimage.filters`); which
side of the threshold is the object is decided from the image border (see
:func:`foreground_mask`).  Thresholds and Hu moments are per-image
scikit-image calls in a loop; masks, IoUs and distances are vectorised.
"""

from __future__ import annotations

import numpy as np

from denoisefeat.metrics._common import (
    as_float_result,
    broadcast_leading,
    check_data_range,
    luminance,
    prepare_images,
    prepare_map,
    prepare_pair,
)

__all__ = [
    "foreground_mask",
    "mask_iou",
    "mask_iou_ground_truth",
    "hu_moments",
    "hu_moment_distance",
    "lowpass_ssim",
]

_THRESHOLD_METHODS = ("otsu", "li", "yen", "triangle", "mean", "isodata")
# Scale of the signed log transform of Hu moments: moments much smaller than
# this (rounding noise of symmetric shapes) count as 0.
_HU_EPS = 1e-6


def _threshold_func(method, metric):
    if method not in _THRESHOLD_METHODS:
        raise ValueError(f"{metric}: method must be one of {_THRESHOLD_METHODS}, got {method!r}")
    import skimage.filters

    return getattr(skimage.filters, f"threshold_{method}")


def _otsu_thresholds(flat):
    """Otsu thresholds of non-constant planes (n, H, W), identical to ``threshold_otsu(plane)``.

    The 256-bin histograms that :func:`skimage.filters.threshold_otsu` builds
    with :func:`numpy.histogram` over each plane's [min, max] are built here
    for all planes at once (same edges, same edge rule), and passed to
    ``threshold_otsu(hist=...)``.
    """
    from skimage.filters import threshold_otsu

    nb = 256
    n = flat.shape[0]
    a = flat.reshape(n, -1)
    lo, hi = a.min(axis=1), a.max(axis=1)
    edges = np.linspace(lo, hi, nb + 1, axis=-1)
    idx = (((a - lo[:, None]) / (hi - lo)[:, None]) * nb).astype(np.intp)
    idx[idx == nb] -= 1
    rows = np.arange(n)[:, None]
    # Bins are defined by their edges (half-open, the last one closed), as in numpy.
    idx[a < edges[rows, idx]] -= 1
    idx[(a >= edges[rows, idx + 1]) & (idx != nb - 1)] += 1
    counts = np.bincount((idx + nb * rows).ravel(), minlength=n * nb).reshape(n, nb)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    return np.array([threshold_otsu(hist=(counts[i], centers[i])) for i in range(n)])


def _split(lum, method, metric):
    """Per-plane threshold; returns (bright, dark) boolean maps, both empty for constant planes."""
    thr_f = _threshold_func(method, metric)
    flat = lum.reshape((-1,) + lum.shape[-2:])
    lo, hi = flat.min(axis=(-2, -1)), flat.max(axis=(-2, -1))
    varying = hi > lo
    t = np.zeros(flat.shape[0])
    if method == "otsu":
        if varying.any():
            t[varying] = _otsu_thresholds(flat[varying])
    else:
        for i in np.nonzero(varying)[0]:
            t[i] = thr_f(flat[i])
    t = t.reshape(lum.shape[:-2])[..., None, None]
    varying = varying.reshape(lum.shape[:-2])[..., None, None]
    bright = (lum > t) & varying
    dark = (lum <= t) & varying
    return bright, dark


def _border_bright_fraction(bright):
    border = np.zeros(bright.shape[-2:], dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return bright[..., border].mean(axis=-1)


def _auto_polarity(bright):
    """True where the object is the bright class: the class covering at most half the border."""
    return _border_bright_fraction(bright) <= 0.5


def threshold_masks(lum, *, method, polarity, metric):
    """Foreground masks and the polarity used (True = bright object), per plane."""
    bright, dark = _split(lum, method, metric)
    if polarity == "auto":
        pol = _auto_polarity(bright)
    elif polarity in ("bright", "dark"):
        pol = np.full(lum.shape[:-2], polarity == "bright")
    else:
        raise ValueError(f"{metric}: polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    return np.where(pol[..., None, None], bright, dark), pol


def foreground_mask(images, *, method="otsu", polarity="auto", channel_axis=-3):
    """Foreground (object) mask of each image by global thresholding of its luminance.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images, RGB or grey (any scale).
    method : {"otsu", "li", "yen", "triangle", "mean", "isodata"}, optional
        Threshold of :mod:`skimage.filters` (``threshold_<method>``), computed
        per image; default Otsu.
    polarity : {"auto", "bright", "dark"}, optional
        Which side of the threshold is the object.  ``"bright"``: ``L > t``;
        ``"dark"``: ``L <= t``; ``"auto"`` (default): the class that covers
        at most half of the image's outermost pixel ring (objects sit inside
        the frame, the background touches it), ties going to bright.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    mask : ndarray of bool, shape (..., H, W)
        True on the object.  A constant image has an empty mask.  Not a
        similarity.

    Notes
    -----
    Otsu thresholds are computed for the whole batch at once: the 256-bin
    histograms that :func:`skimage.filters.threshold_otsu` would build (numpy
    bins over each image's [min, max]) are built with one ``bincount`` and
    passed to ``threshold_otsu(hist=...)``, which gives the same thresholds.
    Other methods call ``threshold_<method>`` per image.  Constant images
    have no threshold and an empty mask.

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level
       histograms", IEEE Trans. Syst. Man Cybern. 9(1), 62-66 (1979).
       :DOI:`10.1109/TSMC.1979.4310076`
    """
    metric = "foreground_mask"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis)
    return threshold_masks(luminance(a), method=method, polarity=polarity, metric=metric)[0]


def iou_of_masks(a, b):
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    out = np.ones(union.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def pair_masks(x, y, *, method, metric):
    """Masks of the images with the polarity of their reference, and the reference's masks."""
    ref_mask, pol = threshold_masks(luminance(y), method=method, polarity="auto", metric=metric)
    lum_x = luminance(x)
    bright, dark = _split(lum_x, method, metric)
    img_mask = np.where(pol[..., None, None], bright, dark)
    return img_mask, ref_mask


def mask_iou(images, reference, *, method="otsu", channel_axis=-3):
    """Intersection over union of the foreground masks of images and reference.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images, RGB or grey.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    method : str, optional
        Threshold method, as in :func:`foreground_mask` (default Otsu).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    iou : ndarray of float64, shape (...)
        Range [0, 1]; higher = closer to the reference; 1 for identical images.
        Two empty masks (e.g. two constant images) give 1; one empty mask
        gives 0.

    Notes
    -----
    The reference's mask uses ``polarity="auto"``; each image's mask uses the
    polarity found for its reference (the object of the final image is, say,
    brighter than its background, and the image is segmented the same way),
    so that a step whose background has not yet settled is not segmented
    inside out.  The threshold itself is each image's own.  Symmetric
    only when both images resolve to the same polarity.

    References
    ----------
    .. [1] P. Jaccard, "The distribution of the flora in the alpine zone",
       New Phytologist 11(2), 37-50 (1912).
       :DOI:`10.1111/j.1469-8137.1912.tb05611.x`
    .. [2] N. Otsu (1979), see :func:`foreground_mask`.
    """
    metric = "mask_iou"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    img_mask, ref_mask = pair_masks(x, y, method=method, metric=metric)
    return as_float_result(iou_of_masks(img_mask, ref_mask))


def mask_iou_ground_truth(images, masks, *, method="otsu", channel_axis=-3):
    """Intersection over union of the images' foreground masks with ground-truth masks.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images, RGB or grey.
    masks : array_like, shape (..., H, W)
        Ground-truth object masks (bool, or coverage in [0, 1] thresholded at
        0.5, e.g. DiffShapes' ``mask``); leading dimensions broadcast against
        those of ``images``.
    method : str, optional
        Threshold method, as in :func:`foreground_mask`.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    iou : ndarray of float64, shape (...)
        Range [0, 1]; higher = closer to the ground truth.  An empty image
        mask and an empty ground truth give 1; exactly one empty gives 0.

    Notes
    -----
    The polarity (object brighter or darker than its background) is read
    from the ground truth: bright if the image's mean luminance inside the
    ground-truth mask is at least its mean outside; ``"auto"`` (see
    :func:`foreground_mask`) where the ground truth is empty or full.

    References
    ----------
    .. [1] P. Jaccard (1912), see :func:`mask_iou`.
    """
    metric = "mask_iou_ground_truth"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis)
    gt = prepare_map(masks, metric=metric, name="masks", shape_hw=a.shape[-2:])
    shape = broadcast_leading(a.shape[:-3], gt.shape[:-2], metric=metric, what="masks")
    lum = luminance(a)
    bright, dark = _split(lum, method, metric)
    gt = np.broadcast_to(gt, shape + gt.shape[-2:])
    lum_b = np.broadcast_to(lum, gt.shape)
    n_in = gt.sum(axis=(-2, -1))
    n_out = gt.shape[-1] * gt.shape[-2] - n_in
    mean_in = (lum_b * gt).sum(axis=(-2, -1)) / np.maximum(n_in, 1)
    mean_out = (lum_b * ~gt).sum(axis=(-2, -1)) / np.maximum(n_out, 1)
    auto = np.broadcast_to(_auto_polarity(bright), shape)
    pol = np.where((n_in > 0) & (n_out > 0), mean_in >= mean_out, auto)
    img_mask = np.where(pol[..., None, None], bright, dark)
    return as_float_result(iou_of_masks(img_mask, gt))


def hu_of_masks(masks):
    """Hu moments (..., 7) of boolean masks (..., H, W); zeros for empty masks.

    Central and normalised moments (up to order 3) are computed for the whole
    batch with numpy; :func:`skimage.measure.moments_hu` turns each image's
    normalised moments into the seven invariants.  Equal (to rounding) to
    ``moments_hu(moments_normalized(moments_central(mask, order=3), order=3))``.
    """
    from skimage.measure import moments_hu

    lead = masks.shape[:-2]
    H, W = masks.shape[-2:]
    m = masks.reshape(-1, H, W).astype(np.float64)
    m00 = m.sum(axis=(1, 2))
    ok = m00 > 0
    out = np.zeros((m.shape[0], 7))
    if ok.any():
        m, m00 = m[ok], m00[ok]
        y, x = np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)
        cy = np.einsum("nyx,y->n", m, y) / m00
        cx = np.einsum("nyx,x->n", m, x) / m00
        powers = np.arange(4)
        py = (y[None, :] - cy[:, None])[:, None, :] ** powers[None, :, None]  # (n, 4, H)
        px = (x[None, :] - cx[:, None])[:, None, :] ** powers[None, :, None]  # (n, 4, W)
        mu = np.einsum("nyx,npy,nqx->npq", m, py, px)
        order = powers[:, None] + powers[None, :]
        nu = mu / m00[:, None, None] ** (order / 2 + 1)
        out[ok] = np.stack([moments_hu(v) for v in nu])
    return out.reshape(lead + (7,))


def log_hu(hu):
    return np.sign(hu) * np.log10(1.0 + np.abs(hu) / _HU_EPS)


def hu_moments(images, *, method="otsu", polarity="auto", channel_axis=-3):
    """The seven Hu moment invariants of each image's foreground mask.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images, RGB or grey.
    method, polarity, channel_axis : optional
        Foreground mask options, as in :func:`foreground_mask`.

    Returns
    -------
    hu : ndarray of float64, shape (..., 7)
        :func:`skimage.measure.moments_hu` of the binary mask (invariant to
        translation, scale and rotation).  An empty mask (e.g. a constant
        image) gives zeros.  Not a similarity.

    Notes
    -----
    Central and normalised moments up to order 3 are computed for the whole
    batch with numpy (their textbook definitions, equal to
    :func:`skimage.measure.moments_central` and
    :func:`skimage.measure.moments_normalized` to rounding);
    :func:`skimage.measure.moments_hu` is called per image.

    References
    ----------
    .. [1] M.-K. Hu, "Visual pattern recognition by moment invariants", IRE
       Trans. Inf. Theory 8(2), 179-187 (1962). :DOI:`10.1109/TIT.1962.1057692`
    """
    metric = "hu_moments"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis)
    m, _ = threshold_masks(luminance(a), method=method, polarity=polarity, metric=metric)
    return as_float_result(hu_of_masks(m))


def hu_moment_distance(images, reference, *, method="otsu", channel_axis=-3):
    """Log-scaled distance between the Hu moments of the foreground masks of images and reference.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images, RGB or grey.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    method : str, optional
        Threshold method, as in :func:`foreground_mask`.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    distance : ndarray of float64, shape (...)
        ``sum_k |g(h_k) - g(h'_k)|`` over the seven Hu moments ``h`` of the
        image's mask and ``h'`` of the reference's, with the signed log scale
        ``g(h) = sign(h) log10(1 + |h| / 1e-6)``.  Range [0, inf) (in
        practice below about 50); 0 for identical images and for the same
        shape translated, scaled or rotated; lower = closer to the reference.
        Symmetric in the masks.

    Notes
    -----
    Masks as in :func:`mask_iou` (the images use their reference's
    polarity).  Hu moments span many decades, so they are compared on a log
    scale, as in OpenCV's ``matchShapes``; the offset ``1e-6`` makes ``g``
    continuous through 0, so that the near-zero higher moments of symmetric
    shapes (whose sign is rounding noise) do not dominate.  An empty mask
    has all moments 0: two empty masks are at distance 0, and an empty mask
    is at a finite distance from any shape.

    References
    ----------
    .. [1] M.-K. Hu (1962), see :func:`hu_moments`.
    """
    metric = "hu_moment_distance"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    img_mask, ref_mask = pair_masks(x, y, method=method, metric=metric)
    return as_float_result(
        np.abs(log_hu(hu_of_masks(img_mask)) - log_hu(hu_of_masks(ref_mask))).sum(axis=-1)
    )


def lowpass_ssim(
    images,
    reference,
    *,
    data_range,
    cutoff=None,
    channel_axis=-3,
    win_size=None,
    gaussian_weights=False,
):
    """SSIM of the low-pass (global shape and layout) images.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Image batch.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    data_range : float
        Data range of the images (1.0 for [0, 1]).  Required.  Used as is for
        the low-pass images, whose values stay (up to ringing) in the same
        range.
    cutoff : float, optional
        Cut-off radial frequency in cycles/pixel; default the upper edge of
        the ``low`` band of :data:`denoisefeat.frequency.DEFAULT_BANDS` (1/16).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.
    win_size, gaussian_weights : optional
        SSIM window, as in :func:`denoisefeat.metrics.ssim`.

    Returns
    -------
    ssim : ndarray of float64, shape (...)
        Range [-1, 1]; higher = closer to the reference; 1 for identical images.

    Notes
    -----
    The low-pass image is the first band of
    :func:`denoisefeat.frequency.band_pass` with bands ``{low: (0, cutoff),
    rest: (cutoff, inf)}`` (an ideal radial filter, which rings near sharp
    edges).  Constant images are their own low-pass images.

    References
    ----------
    .. [1] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli (2004),
       see :func:`denoisefeat.metrics.ssim`.
    """
    from denoisefeat.frequency import DEFAULT_BANDS, band_pass
    from denoisefeat.metrics.similarity import check_extent, resolve_window, ssim_means

    metric = "lowpass_ssim"
    x, y, _ = prepare_pair(images, reference, metric=metric, channel_axis=channel_axis)
    r = check_data_range(data_range, metric=metric)
    w = resolve_window(win_size, gaussian_weights, metric=metric)
    check_extent(x.shape[-2:], w, metric=metric)
    cutoff = DEFAULT_BANDS["low"][1] if cutoff is None else float(cutoff)
    if not 0 < cutoff < np.inf:
        raise ValueError(f"{metric}: cutoff must be positive and finite, got {cutoff!r}")
    bands = {"low": (0.0, cutoff), "rest": (cutoff, np.inf)}
    xl = np.asarray(band_pass(x, bands=bands), dtype=np.float64)[..., 0, :, :]
    yl = np.asarray(band_pass(y, bands=bands), dtype=np.float64)[..., 0, :, :]
    s, _ = ssim_means(xl, yl, data_range=r, win_size=w, gaussian_weights=gaussian_weights)
    return as_float_result(s.mean(axis=-1))
