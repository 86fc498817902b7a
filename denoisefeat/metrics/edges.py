"""Edge metrics of image batches: edge maps, density, sharpness, width, precision/recall.

Edges are found on the luminance (:func:`skimage.color.rgb2gray` for RGB) of
images in [0, 1].  Canny and Sobel are per-image algorithms in scikit-image,
so edge maps are computed with a loop over the (H, W) planes; everything
after the edge map (densities, dilations, gradients, neighbourhood
percentiles, edge profiles) is vectorised over the batch.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from denoisefeat.metrics._common import (
    as_float_result,
    broadcast_leading,
    luminance,
    per_image,
    prepare_images,
    prepare_map,
)

__all__ = ["edge_map", "edge_density", "edge_sharpness", "edge_width_10_90", "edge_prf"]

# scikit-image's canny defaults for float images, in units of its (unnormalised)
# ndimage.sobel gradient magnitude.
_CANNY_LOW, _CANNY_HIGH = 0.1, 0.2
# skimage.filters.sobel is normalised 8 * sqrt(2) times smaller than the
# gradient magnitude canny thresholds: the same numbers divided by that factor
# detect the same steps with method="sobel".
_SOBEL_SCALE = 8.0 * math.sqrt(2.0)


def edges_of_luminance(lum, *, method, sigma, low_threshold, high_threshold, metric):
    """Boolean edge maps (..., H, W) of luminance planes (..., H, W)."""
    if sigma < 0:
        raise ValueError(f"{metric}: sigma must be >= 0, got {sigma}")
    if method == "canny":
        from skimage.feature import canny

        lo = _CANNY_LOW if low_threshold is None else float(low_threshold)
        hi = _CANNY_HIGH if high_threshold is None else float(high_threshold)
        if hi < lo:
            raise ValueError(f"{metric}: low_threshold={lo} exceeds high_threshold={hi}")
        return per_image(lambda p: canny(p, sigma=sigma, low_threshold=lo, high_threshold=hi), lum)
    if method == "sobel":
        from skimage.filters import apply_hysteresis_threshold, gaussian, sobel

        lo = _CANNY_LOW / _SOBEL_SCALE if low_threshold is None else float(low_threshold)
        hi = _CANNY_HIGH / _SOBEL_SCALE if high_threshold is None else float(high_threshold)
        if hi < lo:
            raise ValueError(f"{metric}: low_threshold={lo} exceeds high_threshold={hi}")

        def one(p):
            if sigma > 0:
                p = gaussian(p, sigma=sigma, mode="nearest", preserve_range=True)
            return apply_hysteresis_threshold(sobel(p), lo, hi)

        return per_image(one, lum)
    raise ValueError(f"{metric}: method must be 'canny' or 'sobel', got {method!r}")


def edge_map(
    images, *, method="canny", sigma=1.0, low_threshold=None, high_threshold=None, channel_axis=-3
):
    """Boolean edge map of each image's luminance.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB (C = 3) or grey (C = 1).
    method : {"canny", "sobel"}, optional
        ``"canny"``: :func:`skimage.feature.canny` (one-pixel-wide edges).
        ``"sobel"``: :func:`skimage.filters.sobel` magnitude of the image
        smoothed by a Gaussian of ``sigma``, hysteresis-thresholded with
        :func:`skimage.filters.apply_hysteresis_threshold` (thick edges, no
        non-maximum suppression).
    sigma : float, optional
        Standard deviation of the Gaussian smoothing, in pixels (default 1).
    low_threshold, high_threshold : float, optional
        Hysteresis thresholds on the gradient magnitude, in the units of the
        method's own gradient (absolute, for images in [0, 1]).  Defaults:
        canny's 0.1 and 0.2 (a unit step smoothed with sigma = 1 has magnitude
        about 3.2, so steps of contrast above about 0.06 are found); for
        ``"sobel"`` the same values divided by ``8 sqrt(2)`` (the
        normalisation of :func:`skimage.filters.sobel`), which detect the
        same steps.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    edges : ndarray of bool, shape (..., H, W)
        True on edge pixels.  Not a similarity.

    Notes
    -----
    Per-image scikit-image calls (canny and sobel work on 2-D images only).
    Canny never marks the outermost pixel ring.  A constant image has no edges.

    References
    ----------
    .. [1] J. Canny, "A computational approach to edge detection", IEEE Trans.
       Pattern Anal. Mach. Intell. 8(6), 679-698 (1986).
       :DOI:`10.1109/TPAMI.1986.4767851`
    """
    metric = "edge_map"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    return edges_of_luminance(
        luminance(a),
        method=method,
        sigma=sigma,
        low_threshold=low_threshold,
        high_threshold=high_threshold,
        metric=metric,
    )


def edge_density(
    images, *, method="canny", sigma=1.0, low_threshold=None, high_threshold=None, channel_axis=-3
):
    """Fraction of edge pixels in each image.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    method, sigma, low_threshold, high_threshold, channel_axis : optional
        As in :func:`edge_map`.

    Returns
    -------
    density : ndarray of float64, shape (...)
        Range [0, 1]; 0 for a constant image.  Not a similarity.

    Notes
    -----
    ``edge_map(images, ...).mean(axis=(-2, -1))``.  Canny edges are one pixel
    wide, so the density is about the edge length per pixel of image area.

    References
    ----------
    .. [1] J. Canny (1986), see :func:`edge_map`.
    """
    e = edge_map(
        images,
        method=method,
        sigma=sigma,
        low_threshold=low_threshold,
        high_threshold=high_threshold,
        channel_axis=channel_axis,
    )
    return as_float_result(e.mean(axis=(-2, -1)))


def _sobel_gradient(lum):
    """Sobel gradient (gy, gx) over the last two axes, in intensity per pixel.

    Central difference ``[-1, 0, 1] / 2`` across, ``[1, 2, 1] / 4`` smoothing
    along, replicated borders: a linear ramp of slope ``s`` gives ``|g| = s``.
    """
    d = np.array([-0.5, 0.0, 0.5])
    s = np.array([0.25, 0.5, 0.25])
    gy = ndi.correlate1d(
        ndi.correlate1d(lum, d, axis=-2, mode="nearest"), s, axis=-1, mode="nearest"
    )
    gx = ndi.correlate1d(
        ndi.correlate1d(lum, d, axis=-1, mode="nearest"), s, axis=-2, mode="nearest"
    )
    return gy, gx


def _resolve_edges(edges, a, lum, *, sigma, metric):
    """Own canny edges, or user edges broadcast to the batch."""
    if edges is None:
        return edges_of_luminance(
            lum, method="canny", sigma=sigma, low_threshold=None, high_threshold=None, metric=metric
        )
    e = prepare_map(edges, metric=metric, name="edges", shape_hw=lum.shape[-2:])
    shape = broadcast_leading(lum.shape[:-2], e.shape[:-2], metric=metric, what="edges")
    return np.broadcast_to(e, shape + lum.shape[-2:])


def _percentiles_10_90(rows):
    """``np.percentile(rows, [10, 90], axis=-1)`` (linear interpolation) with one partial sort."""
    n = rows.shape[-1]
    pos = np.array([0.1, 0.9]) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(rows, sorted({*lo, *hi}), axis=-1)
    frac = pos - lo
    vals = part[:, lo] + frac * (part[:, hi] - part[:, lo])
    return vals[:, 0], vals[:, 1]


def sharpness_from(lum, e, *, radius):
    """Mean contrast-normalised gradient at the edge pixels; 0 where there are none."""
    lead = e.shape[:-2]
    lum = np.broadcast_to(lum, e.shape)
    out = np.zeros(lead, dtype=np.float64)
    if not e.any():
        return out
    gy, gx = _sobel_gradient(np.ascontiguousarray(lum))
    k = 2 * radius + 1
    padded = np.pad(lum, [(0, 0)] * len(lead) + [(radius, radius)] * 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(-2, -1))
    hood = windows[e].reshape(-1, k * k)  # (n_edge_pixels, k*k)
    p10, p90 = _percentiles_10_90(hood)
    grad = np.hypot(gy[e], gx[e])
    contrast = p90 - p10
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(contrast > 1e-12, 2.0 * grad / contrast, 0.0)
    ratio = np.clip(ratio, 0.0, 1.0)
    idx = np.nonzero(e.reshape(-1, e.shape[-2] * e.shape[-1]))[0]
    n = np.bincount(idx, minlength=out.size)
    total = np.bincount(idx, weights=ratio, minlength=out.size)
    flat = out.reshape(-1)
    np.divide(total, n, out=flat, where=n > 0)
    return flat.reshape(lead)


def edge_sharpness(images, *, edges=None, sigma=1.0, radius=3, channel_axis=-3):
    """Contrast-normalised gradient at the edges: how crisp the edges are.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    edges : array_like of bool, shape (..., H, W), optional
        Where to measure (e.g. the reference's edges, to follow the final
        image's edges through the steps); broadcasts against the images'
        leading dimensions.  Default: each image's own canny edges
        (:func:`edge_map` with ``sigma`` and the default thresholds).
    sigma : float, optional
        Canny smoothing used to find the edges when ``edges`` is None.
    radius : int, optional
        Half-side of the square neighbourhood in which the local contrast is
        measured (default 3: 7 x 7 pixels).  It should span the transition of
        the blurriest edge of interest (an edge blurred by a Gaussian of
        sigma ``s`` spans about ``2.5 s`` pixels from 10% to 90%).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    sharpness : ndarray of float64, shape (...)
        Range [0, 1]: 1 for an ideal (anti-aliased, one-pixel) step edge,
        decreasing as edges blur (about 0.64, 0.44, 0.38 for a step blurred
        by a Gaussian of sigma 1, 2, 3 with the default radius); 0 when there
        are no edge pixels (e.g. a constant image).  Independent of the edge
        contrast.  Not a similarity (higher = sharper).

    Notes
    -----
    At every edge pixel ``p``,

        ``s(p) = 2 |grad L(p)| / (P90(L, N(p)) - P10(L, N(p)))``

    clipped to [0, 1], where ``L`` is the luminance, ``grad`` the Sobel
    gradient normalised to intensity per pixel (central difference across,
    [1, 2, 1] / 4 along the edge) and ``P10``, ``P90`` the 10th and 90th
    percentiles of ``L`` in the ``(2 radius + 1)**2`` neighbourhood
    ``N(p)``; the image's value is the mean of ``s`` over its edge pixels.
    The percentiles estimate the step's two plateaus robustly to noise, so
    the ratio is the edge's maximal slope in units of its own contrast, i.e.
    the reciprocal of an equivalent edge width; the factor 2 makes an ideal
    step read 1 (a central difference spreads a one-pixel step over two
    pixels).  Contrast below 1e-12 gives 0.  The percentiles use replicated
    borders.

    For a step blurred by a Gaussian of large ``sigma`` the value tends to
    ``2 / (sqrt(2 pi) sigma)`` times a factor that grows as the neighbourhood
    covers less of the transition, so keep ``radius`` fixed when comparing.

    References
    ----------
    .. [1] P. Marziliano, F. Dufaux, S. Winkler and T. Ebrahimi, "A
       no-reference perceptual blur metric", Proc. IEEE ICIP 2002, vol. 3,
       57-60. :DOI:`10.1109/ICIP.2002.1038902`
    """
    metric = "edge_sharpness"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    if int(radius) != radius or radius < 1:
        raise ValueError(f"{metric}: radius must be a positive integer, got {radius!r}")
    lum = luminance(a)
    e = _resolve_edges(edges, a, lum, sigma=sigma, metric=metric)
    return as_float_result(sharpness_from(lum, e, radius=int(radius)))


def _width_from(lum, e, *, radius, step=0.25):
    """Mean 10-90% width along the gradient at the edge pixels; 2 * radius where there are none."""
    lead = e.shape[:-2]
    H, W = e.shape[-2:]
    lum = np.ascontiguousarray(np.broadcast_to(lum, e.shape)).reshape(-1, H, W)
    e = e.reshape(-1, H, W)
    out = np.full(e.shape[0], 2.0 * radius, dtype=np.float64)
    if not e.any():
        return out.reshape(lead)
    gy, gx = _sobel_gradient(lum)
    b, iy, ix = np.nonzero(e)
    g = np.hypot(gy[b, iy, ix], gx[b, iy, ix])
    ok = g > 1e-12
    b, iy, ix, g = b[ok], iy[ok], ix[ok], g[ok]
    ny, nx = gy[b, iy, ix] / g, gx[b, iy, ix] / g
    t = np.arange(-radius, radius + step / 2, step)  # samples along the normal
    coords = np.stack(
        [
            np.broadcast_to(b[:, None], (b.size, t.size)).astype(np.float64),
            iy[:, None] + t[None, :] * ny[:, None],
            ix[:, None] + t[None, :] * nx[:, None],
        ]
    )
    prof = ndi.map_coordinates(lum, coords.reshape(3, -1), order=1, mode="nearest").reshape(
        b.size, t.size
    )
    lo, hi = prof.min(axis=1, keepdims=True), prof.max(axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(span > 1e-12, (prof - lo) / span, 0.0)
    inside = (norm > 0.1) & (norm < 0.9)
    width = inside.sum(axis=1) * step
    n = np.bincount(b, minlength=out.size)
    total = np.bincount(b, weights=width, minlength=out.size)
    np.divide(total, n, out=out, where=n > 0)
    return out.reshape(lead)


def edge_width_10_90(images, *, edges=None, sigma=1.0, radius=4, channel_axis=-3):
    """Mean 10%-90% rise distance of the edges, in pixels.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    edges : array_like of bool, shape (..., H, W), optional
        Where to measure; default each image's own canny edges (see
        :func:`edge_sharpness`).
    sigma : float, optional
        Canny smoothing used when ``edges`` is None.
    radius : int, optional
        The profile is sampled from ``-radius`` to ``+radius`` pixels along the
        gradient direction (default 4).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    width : ndarray of float64, shape (...)
        Range [0, 2 radius] pixels; lower = sharper.  Between about 0.8 and
        1.6 px for an anti-aliased one-pixel step (depending on its sub-pixel
        position; the profile is a bilinear interpolation) and about
        ``2.56 sigma`` for a step blurred by a Gaussian of ``sigma`` (2.8 and
        4.8 px for sigma 1 and 2), saturating once the profile no longer
        spans the whole transition (5.5 px for sigma 3 at the default
        radius).  An image without edge pixels (e.g. constant) gives the
        upper limit ``2 radius``, consistent with a sharpness of 0.  Not a
        similarity.

    Notes
    -----
    At every edge pixel the luminance is sampled along the unit gradient
    direction every 0.25 px with bilinear interpolation
    (:func:`scipy.ndimage.map_coordinates`); the profile is rescaled between
    its minimum and maximum and the width is the length of the profile lying
    strictly between 10% and 90% (the 10-90 rise distance for a monotone
    profile).  The image's value is the mean over its edge pixels.

    References
    ----------
    .. [1] P. Marziliano, F. Dufaux, S. Winkler and T. Ebrahimi, "A
       no-reference perceptual blur metric", Proc. IEEE ICIP 2002, vol. 3,
       57-60. :DOI:`10.1109/ICIP.2002.1038902`
    .. [2] ISO 12233:2017, "Photography -- Electronic still picture imaging --
       Resolution and spatial frequency responses" (10-90% edge rise distance).
    """
    metric = "edge_width_10_90"
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    if int(radius) != radius or radius < 1:
        raise ValueError(f"{metric}: radius must be a positive integer, got {radius!r}")
    lum = luminance(a)
    e = _resolve_edges(edges, a, lum, sigma=sigma, metric=metric)
    return as_float_result(_width_from(lum, e, radius=int(radius)))


def _dilate(e, tolerance):
    """Chessboard dilation of boolean maps (..., H, W) by ``tolerance`` pixels."""
    if tolerance == 0:
        return e
    k = 2 * tolerance + 1
    return ndi.maximum_filter(e, size=(1,) * (e.ndim - 2) + (k, k), mode="constant", cval=False)


def prf_from(e, r, *, tolerance):
    """Precision, recall, F1 (..., 3) of edge maps ``e`` against (broadcasting) maps ``r``."""
    e_d, r_d = _dilate(e, tolerance), _dilate(r, tolerance)
    n_e = e.sum(axis=(-2, -1))
    n_r = r.sum(axis=(-2, -1))
    tp_e = (e & r_d).sum(axis=(-2, -1))
    tp_r = (r & e_d).sum(axis=(-2, -1))
    n_e, n_r, tp_e, tp_r = np.broadcast_arrays(n_e, n_r, tp_e, tp_r)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_e > 0, tp_e / np.maximum(n_e, 1), np.where(n_r > 0, 0.0, 1.0))
        recall = np.where(n_r > 0, tp_r / np.maximum(n_r, 1), np.where(n_e > 0, 0.0, 1.0))
        s = precision + recall
        f1 = np.where(s > 0, 2 * precision * recall / np.where(s > 0, s, 1.0), 0.0)
    return np.stack([precision, recall, f1], axis=-1)


def edge_prf(
    images,
    reference_edges,
    *,
    tolerance=1,
    sigma=1.0,
    low_threshold=None,
    high_threshold=None,
    channel_axis=-3,
):
    """Precision, recall and F1 of each image's canny edges against reference edges.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    reference_edges : array_like, shape (..., H, W)
        Reference edge maps (bool; numeric maps are thresholded at 0.5), e.g.
        ``edge_map(final_images)`` or DiffShapes' ground-truth ``edges``; the
        leading dimensions broadcast against those of ``images``.
    tolerance : int, optional
        An edge pixel matches if a reference edge pixel lies within this
        chessboard distance (default 1: the 8-neighbourhood).
    sigma, low_threshold, high_threshold, channel_axis : optional
        Canny options for the images' edges, as in :func:`edge_map`.

    Returns
    -------
    prf : ndarray of float64, shape (..., 3)
        ``[..., 0]`` precision (fraction of the image's edge pixels near a
        reference edge), ``[..., 1]`` recall (fraction of reference edge
        pixels near an image edge), ``[..., 2]`` F1 (their harmonic mean).
        Range [0, 1] each; higher = closer to the reference.

    Notes
    -----
    Tolerance by binary dilation (a square of side ``2 tolerance + 1``) of the
    other map.  Empty maps are defined, never NaN: both empty gives
    (1, 1, 1); no image edges but some reference edges gives precision 0,
    recall 0; image edges but no reference edges gives precision 0, recall 0;
    F1 is 0 whenever precision + recall is 0.

    References
    ----------
    .. [1] D. R. Martin, C. C. Fowlkes and J. Malik, "Learning to detect
       natural image boundaries using local brightness, color, and texture
       cues", IEEE Trans. Pattern Anal. Mach. Intell. 26(5), 530-549 (2004).
       :DOI:`10.1109/TPAMI.2004.1273918`
    """
    metric = "edge_prf"
    if int(tolerance) != tolerance or tolerance < 0:
        raise ValueError(f"{metric}: tolerance must be a non-negative integer, got {tolerance!r}")
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    r = prepare_map(reference_edges, metric=metric, name="reference_edges", shape_hw=a.shape[-2:])
    broadcast_leading(a.shape[:-3], r.shape[:-2], metric=metric, what="reference_edges")
    e = edges_of_luminance(
        luminance(a),
        method="canny",
        sigma=sigma,
        low_threshold=low_threshold,
        high_threshold=high_threshold,
        metric=metric,
    )
    return as_float_result(prf_from(e, r, tolerance=int(tolerance)))
