"""Texture metrics of image batches: GLCM statistics, LBP histograms, mid-band wavelet energy.

All work on the luminance of images in [0, 1].  GLCMs and LBPs are per-image
algorithms in scikit-image (:func:`skimage.feature.graycomatrix`,
:func:`skimage.feature.local_binary_pattern`): they are computed in a loop
over the (H, W) planes, and everything after them (GLCM properties for the
whole batch in one :func:`skimage.feature.graycoprops` call, histograms,
distances) is vectorised.
"""

from __future__ import annotations

import numpy as np

from denoisefeat.metrics._common import (
    as_float_result,
    luminance,
    per_image,
    prepare_images,
    prepare_pair,
)

__all__ = [
    "GLCM_PROPERTIES",
    "glcm_features",
    "lbp_histogram",
    "lbp_distance",
    "wavelet_texture_energy",
]

#: The GLCM properties returned by :func:`glcm_features`, in order.
GLCM_PROPERTIES: tuple[str, ...] = ("contrast", "homogeneity", "energy", "correlation")

_DEFAULT_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
# GLCMs of this many images are stacked into one graycoprops call.
_GLCM_CHUNK = 256


def _quantise(lum, levels):
    """Grey levels 0 .. levels - 1 of luminance in [0, 1] (values outside are clipped)."""
    q = np.minimum(np.floor(np.clip(lum, 0.0, 1.0) * levels), levels - 1)
    return q.astype(np.uint8 if levels <= 256 else np.uint16)


def _glcm_from_luminance(lum, *, distances, angles, levels):
    from skimage.feature import graycomatrix, graycoprops

    q = _quantise(lum, levels)
    lead = q.shape[:-2]
    flat = q.reshape((-1,) + q.shape[-2:])
    nd, na = len(distances), len(angles)
    out = np.empty((flat.shape[0], len(GLCM_PROPERTIES)), dtype=np.float64)
    for start in range(0, flat.shape[0], _GLCM_CHUNK):
        chunk = flat[start : start + _GLCM_CHUNK]
        # graycoprops normalises and evaluates each (distance, angle) slice
        # independently, so stacking the images along the distance axis
        # evaluates the whole chunk in one call.
        P = np.concatenate(
            [
                graycomatrix(p, distances, angles, levels=levels, symmetric=True, normed=False)
                for p in chunk
            ],
            axis=2,
        )
        for k, prop in enumerate(GLCM_PROPERTIES):
            v = graycoprops(P, prop).reshape(chunk.shape[0], nd, na)
            if prop == "correlation":
                # Constant images: zero variance.  scikit-image >= 0.19 returns 1;
                # guard older behaviour (NaN) so the result is always defined.
                v = np.where(np.isnan(v), 1.0, v)
            out[start : start + chunk.shape[0], k] = v.mean(axis=(1, 2))
    return out.reshape(lead + (len(GLCM_PROPERTIES),))


def glcm_features(
    images,
    *,
    distances=(1,),
    angles=_DEFAULT_ANGLES,
    levels=32,
    channel_axis=-3,
):
    """Grey-level co-occurrence matrix (GLCM) statistics of each image.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    distances : sequence of int, optional
        Pixel pair distances (default ``(1,)``).
    angles : sequence of float, optional
        Pixel pair angles in radians (default 0, pi/4, pi/2, 3 pi/4).
    levels : int, optional
        Number of grey levels after quantisation (default 32, at most 65536).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    features : ndarray of float64, shape (..., 4)
        ``[contrast, homogeneity, energy, correlation]`` (see
        :data:`GLCM_PROPERTIES`), each averaged over distances and angles.
        Ranges: contrast [0, (levels - 1)**2] (0 for a constant image),
        homogeneity [0, 1], energy [0, 1] (1 for a constant image),
        correlation [-1, 1].  Not similarities.

    Notes
    -----
    The luminance is quantised to ``floor(L * levels)`` (the value 1 goes
    to ``levels - 1``), and :func:`skimage.feature.graycomatrix` computes a
    symmetric GLCM per image; :func:`skimage.feature.graycoprops` gives the
    properties ("energy" is the square root of the angular second moment).

    **Constant images.** Correlation is undefined (zero variance); it is
    defined here as 1.0 (as in scikit-image >= 0.19: a constant image is
    perfectly predictable from its neighbour).  Contrast is 0, homogeneity
    and energy are 1.

    References
    ----------
    .. [1] R. M. Haralick, K. Shanmugam and I. Dinstein, "Textural features
       for image classification", IEEE Trans. Syst. Man Cybern. SMC-3(6),
       610-621 (1973). :DOI:`10.1109/TSMC.1973.4309314`
    """
    metric = "glcm_features"
    if int(levels) != levels or not 2 <= levels <= 65536:
        raise ValueError(f"{metric}: levels must be an integer in [2, 65536], got {levels!r}")
    if len(distances) == 0 or len(angles) == 0:
        raise ValueError(f"{metric}: distances and angles must be non-empty")
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    return _glcm_from_luminance(
        luminance(a), distances=tuple(distances), angles=tuple(angles), levels=int(levels)
    )


def _lbp_hist_from_luminance(lum, *, P, R):
    from skimage.feature import local_binary_pattern

    # LBP compares neighbours with ">=": on float images rounding noise flips
    # codes, so the luminance is quantised to 8 bits first.
    u8 = np.round(np.clip(lum, 0.0, 1.0) * 255.0).astype(np.uint8)
    codes = per_image(lambda p: local_binary_pattern(p, P, R, method="uniform"), u8).astype(
        np.int64
    )
    # Border pixels compare with neighbours outside the image (read as 0 by
    # scikit-image): they are left out of the histogram.
    b = int(np.ceil(R))
    if codes.shape[-2] <= 2 * b or codes.shape[-1] <= 2 * b:
        raise ValueError(
            f"lbp: images of {codes.shape[-2:]} pixels have no pixel at least R={R} from the border"
        )
    codes = codes[..., b:-b, b:-b]
    n_bins = P + 2
    lead = codes.shape[:-2]
    flat = codes.reshape(-1, codes.shape[-2] * codes.shape[-1])
    idx = flat + n_bins * np.arange(flat.shape[0])[:, None]
    hist = np.bincount(idx.ravel(), minlength=n_bins * flat.shape[0]).reshape(flat.shape[0], n_bins)
    return (hist / flat.shape[1]).reshape(lead + (n_bins,))


def _check_lbp(P, R, metric):
    if int(P) != P or P < 1:
        raise ValueError(f"{metric}: P must be a positive integer, got {P!r}")
    if not R > 0:
        raise ValueError(f"{metric}: R must be positive, got {R!r}")


def lbp_histogram(images, *, P=8, R=1, channel_axis=-3):
    """Normalised histogram of uniform local binary patterns of each image.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    P : int, optional
        Number of circularly symmetric neighbours (default 8).
    R : float, optional
        Radius of the circle in pixels (default 1).
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    hist : ndarray of float64, shape (..., P + 2)
        Fraction of pixels with each rotation-invariant uniform pattern code
        ``0 .. P + 1`` (code ``P + 1`` collects the non-uniform patterns);
        sums to 1.  A constant image has all its mass in code ``P``.

    Notes
    -----
    :func:`skimage.feature.local_binary_pattern` with ``method="uniform"``
    on the luminance quantised to 8 bits (``round(255 L)``); the quantisation
    avoids spurious codes from float rounding between equal neighbours.
    Pixels closer than ``ceil(R)`` to the border are left out of the
    histogram (scikit-image reads their outside neighbours as 0).

    References
    ----------
    .. [1] T. Ojala, M. Pietikainen and T. Maenpaa, "Multiresolution gray-scale
       and rotation invariant texture classification with local binary
       patterns", IEEE Trans. Pattern Anal. Mach. Intell. 24(7), 971-987
       (2002). :DOI:`10.1109/TPAMI.2002.1017623`
    """
    metric = "lbp_histogram"
    _check_lbp(P, R, metric)
    a = prepare_images(images, metric=metric, channel_axis=channel_axis, unit_range=True)
    return as_float_result(_lbp_hist_from_luminance(luminance(a), P=int(P), R=float(R)))


def _chi2(h, g):
    s = h + g
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(s > 0, (h - g) ** 2 / np.where(s > 0, s, 1.0), 0.0)
    return 0.5 * terms.sum(axis=-1)


def lbp_distance(images, reference, *, P=8, R=1, channel_axis=-3):
    """Chi-square distance between the uniform LBP histograms of images and reference.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], RGB or grey.
    reference : array_like, shape (..., C, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    P, R : optional
        LBP neighbours and radius, as in :func:`lbp_histogram`.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    distance : ndarray of float64, shape (...)
        ``0.5 * sum_k (h_k - g_k)**2 / (h_k + g_k)`` over the bins with
        ``h_k + g_k > 0``.  Range [0, 1]: 0 for equal histograms (identical
        images), 1 for histograms with disjoint support.  Symmetric.  Lower =
        closer to the reference.

    Notes
    -----
    The reference's histogram is computed once per reference image.  Two
    constant images (of any values) have the same histogram: distance 0.

    References
    ----------
    .. [1] T. Ojala et al. (2002), see :func:`lbp_histogram`.
    """
    metric = "lbp_distance"
    _check_lbp(P, R, metric)
    x, y, _ = prepare_pair(
        images, reference, metric=metric, channel_axis=channel_axis, unit_range=True
    )
    h = _lbp_hist_from_luminance(luminance(x), P=int(P), R=float(R))
    g = _lbp_hist_from_luminance(luminance(y), P=int(P), R=float(R))
    return as_float_result(_chi2(h, g))


def _wavelet_fraction(lum, *, levels, wavelet):
    from denoisefeat.frequency import wavelet_energy

    centred = lum - lum.mean(axis=(-2, -1), keepdims=True)
    en = wavelet_energy(centred, wavelet=wavelet, mode="periodization")
    if max(levels) > en.level:
        raise ValueError(
            f"wavelet_texture_energy: level {max(levels)} does not exist for "
            f"{lum.shape[-2]}x{lum.shape[-1]} images (at most {en.level})"
        )
    details = np.asarray(en.details, dtype=np.float64)
    total = np.asarray(en.approximation, dtype=np.float64) + details.sum(axis=(-2, -1))
    band = details[..., [j - 1 for j in levels], :].sum(axis=(-2, -1))
    out = np.zeros_like(total)
    np.divide(band, total, out=out, where=total > 1e-24)
    return out


def wavelet_texture_energy(images, *, levels=(2, 3), wavelet="db2", channel_axis=-3):
    """Fraction of each image's luminance variance in the mid-frequency wavelet levels.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images (any scale: the result is scale-invariant), RGB or grey.
    levels : sequence of int, optional
        Detail levels counted as texture (level 1 = finest, periods of 2-4 px).
        Default ``(2, 3)``: periods of about 4-16 px, i.e. about 1/16-1/4
        cycles/pixel, the ``mid`` band of
        :data:`denoisefeat.frequency.DEFAULT_BANDS`.
    wavelet : str, optional
        Orthogonal wavelet (default ``"db2"``, whose octave bands overlap less
        than Haar's: a sinusoid with an 8 px period puts 93% of its energy in
        levels 2-3, against 84% with Haar).  Level 3 of ``"db2"`` needs images
        of at least 24 px; smaller images raise ``ValueError``.
    channel_axis : int or None, optional
        Axis of the channels (default -3); ``None`` for grey ``(..., H, W)``.

    Returns
    -------
    fraction : ndarray of float64, shape (...)
        Energy of the detail coefficients of ``levels`` divided by the total
        energy of the mean-removed luminance.  Range [0, 1]; 0 for a constant
        image (no variance at all).  Not a similarity (higher = more of the
        image's structure at texture scales).

    Notes
    -----
    Computed with :func:`denoisefeat.frequency.wavelet_energy` (PyWavelets
    ``wavedec2`` over the last two axes, periodization mode), vectorised over
    the batch.  We chose a mid-band wavelet energy over a Gabor-filter
    energy because (i) the orthogonal transform splits the variance exactly
    (Parseval) into octave bands, so the fraction is bounded and comparable
    across images and with the Fourier bands of :mod:`denoisefeat.frequency`;
    (ii) it is one batched call instead of a per-image bank of convolutions
    (orientations x frequencies), roughly two orders of magnitude cheaper;
    (iii) it has no tuning beyond the octave choice.  It does not resolve
    orientation; GLCM statistics (:func:`glcm_features`) complement it.
    For sizes that are not divisible by ``2**level`` the transform is not
    exactly orthogonal and the fraction is approximate.

    References
    ----------
    .. [1] S. G. Mallat, "A theory for multiresolution signal decomposition:
       the wavelet representation", IEEE Trans. Pattern Anal. Mach. Intell.
       11(7), 674-693 (1989). :DOI:`10.1109/34.192463`
    """
    metric = "wavelet_texture_energy"
    levels = tuple(levels)
    if len(levels) == 0 or any(int(j) != j or j < 1 for j in levels):
        raise ValueError(f"{metric}: levels must be positive integers, got {levels!r}")
    a = prepare_images(images, metric=metric, channel_axis=channel_axis)
    return as_float_result(
        _wavelet_fraction(luminance(a), levels=tuple(int(j) for j in levels), wavelet=wavelet)
    )
