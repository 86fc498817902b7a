"""Colour metrics of RGB image batches.

Mean CIELAB, CIEDE2000, hue histograms, colourfulness and colour consistency.

Images are RGB in [0, 1] (sRGB, D65), shape ``(..., 3, H, W)``; scikit-image's
colour conversions work on any leading shape with the channels last, so every
function here is vectorised over the whole batch.
"""

from __future__ import annotations

import numpy as np

from denoisefeat.metrics._common import (
    as_float_result,
    broadcast_leading,
    luminance,
    prepare_images,
    prepare_map,
    prepare_pair,
)

__all__ = [
    "mean_lab",
    "delta_e2000",
    "hue_histogram",
    "hue_histogram_distance",
    "colorfulness",
    "color_spread",
    "color_consistency",
]

# Mean chroma (max - min of RGB, in [0, 1]) below which a hue histogram is
# mostly the uniform distribution: hue is not meaningful for grey images.
_CHROMA_PRIOR = 1e-3


def lab_of(a):
    """CIELAB (..., H, W, 3) of a prepared RGB batch (..., 3, H, W)."""
    from skimage.color import rgb2lab

    return rgb2lab(np.moveaxis(a, -3, -1))


def mean_lab(images, *, channel_axis=-3):
    """Mean CIELAB colour of each image.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    lab : ndarray of float64, shape (..., 3)
        Mean ``L*`` (range [0, 100]), ``a*`` and ``b*`` (about [-86, 98] and
        [-108, 95] for sRGB) over the pixels.  Not a similarity.

    Notes
    -----
    :func:`skimage.color.rgb2lab` (D65, 2 degree observer) per pixel, then
    the mean: the mean of the Lab values, not the Lab value of the mean RGB.

    References
    ----------
    .. [1] https://en.wikipedia.org/wiki/CIELAB_color_space
    """
    a = prepare_images(
        images, metric="mean_lab", channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    return as_float_result(lab_of(a).mean(axis=(-3, -2)))


def delta_e_of_lab(lab1, lab2):
    from skimage.color import deltaE_ciede2000

    lab1, lab2 = np.broadcast_arrays(lab1, lab2)
    return deltaE_ciede2000(lab1, lab2, channel_axis=-1)


def delta_e2000(images, reference, *, channel_axis=-3):
    """Mean CIEDE2000 colour difference between each image and the reference, pixel by pixel.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    delta_e : ndarray of float64, shape (...)
        Mean over pixels of :func:`skimage.color.deltaE_ciede2000` between
        co-located pixels.  Range [0, about 120) for sRGB; 0 for identical
        images; about 1 is a just-noticeable difference.  Lower = closer to
        the reference.  Symmetric.

    Notes
    -----
    Both batches are converted with :func:`skimage.color.rgb2lab` (the
    reference once per reference image) and compared pixel by pixel with
    :func:`skimage.color.deltaE_ciede2000` over the broadcast batch; the
    image's value is the mean over pixels.

    References
    ----------
    .. [1] G. Sharma, W. Wu and E. N. Dalal, "The CIEDE2000 color-difference
       formula: implementation notes, supplementary test data, and
       mathematical observations", Color Res. Appl. 30(1), 21-30 (2005).
       :DOI:`10.1002/col.20070`
    """
    x, y, _ = prepare_pair(
        images,
        reference,
        metric="delta_e2000",
        channel_axis=channel_axis,
        channels=(3,),
        unit_range=True,
    )
    return as_float_result(delta_e_of_lab(lab_of(x), lab_of(y)).mean(axis=(-2, -1)))


def _hue_hist(a, bins):
    """Chroma-weighted hue histograms (..., bins), normalised with a uniform prior."""
    from skimage.color import rgb2hsv

    rgb = np.moveaxis(a, -3, -1)
    hue = rgb2hsv(rgb)[..., 0]  # in [0, 1)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)  # = S * V
    lead = hue.shape[:-2]
    n_px = hue.shape[-2] * hue.shape[-1]
    k = np.minimum((hue * bins).astype(np.int64), bins - 1).reshape(-1, n_px)
    idx = k + bins * np.arange(k.shape[0])[:, None]
    h = (
        np.bincount(idx.ravel(), weights=chroma.reshape(-1), minlength=bins * k.shape[0]).reshape(
            -1, bins
        )
        / n_px
    )
    p = (h + _CHROMA_PRIOR / bins) / (h.sum(axis=-1, keepdims=True) + _CHROMA_PRIOR)
    return p.reshape(lead + (bins,))


def _check_bins(bins, metric):
    if int(bins) != bins or bins < 2:
        raise ValueError(f"{metric}: bins must be an integer >= 2, got {bins!r}")
    return int(bins)


def hue_histogram(images, *, bins=36, channel_axis=-3):
    """Chroma-weighted hue histogram of each image.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    bins : int, optional
        Number of hue bins over the circle (default 36: 10 degrees each).
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    hist : ndarray of float64, shape (..., bins)
        A probability distribution over hue bins (bin ``k`` covers hues
        ``[k, k + 1) * 360 / bins`` degrees, 0 = red).  Not a similarity.

    Notes
    -----
    Hue is the HSV hue (:func:`skimage.color.rgb2hsv`).  Each pixel is
    weighted by its chroma ``max(R, G, B) - min(R, G, B)`` (= saturation x
    value), rather than the HSV saturation alone, whose value is arbitrary in
    near-black pixels.  The histogram is ``(h + eps / bins) / (sum(h) + eps)``
    with ``h`` the chroma sums divided by the number of pixels and
    ``eps = 1e-3``: a uniform prior that makes grey images (no hue
    information) uniform histograms, continuously.

    References
    ----------
    .. [1] M. J. Swain and D. H. Ballard, "Color indexing", Int. J. Comput.
       Vis. 7(1), 11-32 (1991). :DOI:`10.1007/BF00130487`
    """
    a = prepare_images(
        images, metric="hue_histogram", channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    return as_float_result(_hue_hist(a, _check_bins(bins, "hue_histogram")))


def _circular_emd(p, q):
    """Wasserstein-1 distance on the circle between histograms (..., bins), in degrees."""
    bins = p.shape[-1]
    d = np.cumsum(p - q, axis=-1)
    # W1 on the circle = min_c sum_k |D_k - c| * bin width, minimised at the median.
    return np.abs(d - np.median(d, axis=-1, keepdims=True)).sum(axis=-1) * (360.0 / bins)


def hue_histogram_distance(images, reference, *, bins=36, channel_axis=-3):
    """Earth mover's distance on the hue circle between chroma-weighted hue histograms.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    bins : int, optional
        Number of hue bins (default 36).
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    distance : ndarray of float64, shape (...)
        Circular Wasserstein-1 distance between the :func:`hue_histogram` of
        the images and of the reference, in degrees of hue: the mean hue
        rotation needed to turn one distribution into the other.  Range
        [0, 180]: 0 for identical images, 180 for two pure hues on opposite
        sides of the circle, about 90 between a pure hue and a grey image
        (uniform histogram).  Symmetric.  Lower = closer to the reference.

    Notes
    -----
    Unlike bin-wise distances (Hellinger, chi-square), the EMD grows with the
    hue shift (red vs orange is closer than red vs blue) and respects the
    wrap-around at 0/360 degrees.  It is computed in closed form: with
    ``D_k`` the cumulative sum of ``p - q``, ``W1 = sum_k |D_k - median(D)|``
    times the bin width (Werman et al. 1985; Rabin et al. 2011).  Histogram
    resolution limits it to multiples of the bin width for pure hues.

    References
    ----------
    .. [1] M. Werman, S. Peleg and A. Rosenfeld, "A distance metric for
       multidimensional histograms", Comput. Vis. Graph. Image Process.
       32(3), 328-336 (1985). :DOI:`10.1016/0734-189X(85)90055-6`
    .. [2] J. Rabin, J. Delon and Y. Gousseau, "Transportation distances on
       the circle", J. Math. Imaging Vis. 41, 147-167 (2011).
       :DOI:`10.1007/s10851-011-0284-0`
    """
    metric = "hue_histogram_distance"
    bins = _check_bins(bins, metric)
    x, y, _ = prepare_pair(
        images, reference, metric=metric, channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    return as_float_result(_circular_emd(_hue_hist(x, bins), _hue_hist(y, bins)))


def colorfulness(images, *, channel_axis=-3):
    """Colourfulness of each image (Hasler and Suesstrunk 2003).

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    colorfulness : ndarray of float64, shape (...)
        ``M = sqrt(s_rg**2 + s_yb**2) + 0.3 sqrt(m_rg**2 + m_yb**2)`` on the
        paper's 0-255 scale.  Range [0, about 270]; 0 for grey images.  The
        paper's categories: not colourful 0, slightly 15, moderately 33,
        averagely 45, quite 59, highly 82, extremely 109.  Not a similarity.

    Notes
    -----
    ``rg = R - G`` and ``yb = (R + G) / 2 - B`` with RGB scaled to [0, 255];
    ``s`` and ``m`` are their standard deviations (population) and means over
    the pixels.

    References
    ----------
    .. [1] D. Hasler and S. Suesstrunk, "Measuring colorfulness in natural
       images", Proc. SPIE 5007, Human Vision and Electronic Imaging VIII,
       87-95 (2003). :DOI:`10.1117/12.477378`
    """
    a = prepare_images(
        images, metric="colorfulness", channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    r, g, b = (255.0 * a[..., k, :, :] for k in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    s = np.sqrt(rg.var(axis=(-2, -1)) + yb.var(axis=(-2, -1)))
    m = np.sqrt(rg.mean(axis=(-2, -1)) ** 2 + yb.mean(axis=(-2, -1)) ** 2)
    return as_float_result(s + 0.3 * m)


def lab_spread(lab, mask):
    """Mean CIE76 distance of the masked pixels to their mean Lab colour.

    The whole image is used where the mask is empty.

    ``lab`` (..., H, W, 3), ``mask`` (..., H, W) broadcasting against it.
    """
    mask = np.broadcast_to(mask, np.broadcast_shapes(mask.shape, lab.shape[:-1]))
    empty = ~mask.any(axis=(-2, -1), keepdims=True)
    w = (mask | empty).astype(np.float64)
    n = w.sum(axis=(-2, -1))
    mean = np.einsum("...yxc,...yx->...c", np.broadcast_to(lab, w.shape + (3,)), w) / n[..., None]
    dist = np.sqrt(((lab - mean[..., None, None, :]) ** 2).sum(axis=-1))
    return (dist * w).sum(axis=(-2, -1)) / n


def color_spread(images, *, mask=None, channel_axis=-3):
    """Colour spread of each image inside a mask: mean CIE76 distance to the mask's mean colour.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    mask : array_like, shape (..., H, W), optional
        Region to measure (bool; numeric masks are thresholded at 0.5),
        broadcasting against the images' leading dimensions.  Default: the
        whole image.  An empty mask also means the whole image.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    spread : ndarray of float64, shape (...)
        In CIELAB units (Delta E*ab, CIE76), range [0, about 130); 0 for a
        uniformly coloured region.  Not a similarity.

    Notes
    -----
    The mean colour is the mean of the pixels' CIELAB values
    (:func:`skimage.color.rgb2lab`); each pixel's difference to it is the
    Euclidean distance in CIELAB (CIE76 Delta E*ab), the mean distance to
    the centroid being the natural spread of a Lab point cloud.  CIEDE2000
    would weigh chroma differences of saturated colours less, at several
    times the cost; it is used for the pixel-wise comparison with the
    reference (:func:`delta_e2000`).

    References
    ----------
    .. [1] CIE 15:2004, "Colorimetry", 3rd edition, Commission
       Internationale de l'Eclairage (CIELAB and Delta E*ab).
    """
    metric = "color_spread"
    a = prepare_images(
        images, metric=metric, channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    if mask is None:
        m = np.ones(a.shape[-2:], dtype=bool)
    else:
        m = prepare_map(mask, metric=metric, name="mask", shape_hw=a.shape[-2:])
        broadcast_leading(a.shape[:-3], m.shape[:-2], metric=metric, what="mask")
    return as_float_result(lab_spread(lab_of(a), m))


def color_consistency(images, reference, *, mask=None, method="otsu", channel_axis=-3):
    """Colour consistency of the object: its colour spread minus the reference's.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        sRGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference (final) images, broadcasting against ``images`` over the
        leading axes.
    mask : array_like, shape (..., H, W), optional
        Object mask (e.g. DiffShapes' ``mask``), broadcasting against the
        images' leading dimensions.  Default: the reference's foreground mask
        (:func:`denoisefeat.metrics.foreground_mask` with ``method``).
    method : str, optional
        Threshold method for the default mask (default Otsu).
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    consistency : ndarray of float64, shape (...)
        ``color_spread(images, mask) - color_spread(reference, mask)`` in
        CIELAB (CIE76 Delta E*ab) units.  Ideal value 0: the object is exactly as uniform in
        colour as in the final image (e.g. a uniformly coloured object in
        both, whatever its colour).  Positive: blotchier/noisier than the
        final object (about 2.3 is a just-noticeable difference, per pixel
        on average); negative: more uniform than the final object (its texture
        or shading has not formed yet).  Range (-130, 130).  Not a similarity
        (``direction=None`` in the registry; ``abs()`` of it is a distance to
        the ideal).

    Notes
    -----
    The spread of a region is the mean CIE76 distance of its pixels to their
    mean CIELAB colour (:func:`color_spread`).  Both spreads are
    measured in the same region, the object of the reference, so the value
    isolates within-object colour variation from changes of the object's
    outline (see :func:`mask_iou`) and of its mean colour (see
    :func:`delta_e2000`).  Where the mask is empty (e.g. a constant
    reference) the whole image is used.  Two constant images give 0.

    References
    ----------
    .. [1] CIE 15:2004, "Colorimetry", 3rd edition, Commission
       Internationale de l'Eclairage (CIELAB and Delta E*ab).
    """
    from denoisefeat.metrics.shape import threshold_masks

    metric = "color_consistency"
    x, y, _ = prepare_pair(
        images, reference, metric=metric, channel_axis=channel_axis, channels=(3,), unit_range=True
    )
    if mask is None:
        m, _ = threshold_masks(luminance(y), method=method, polarity="auto", metric=metric)
    else:
        m = prepare_map(mask, metric=metric, name="mask", shape_hw=x.shape[-2:])
        broadcast_leading(x.shape[:-3], m.shape[:-2], metric=metric, what="mask")
    return as_float_result(lab_spread(lab_of(x), m) - lab_spread(lab_of(y), m))
