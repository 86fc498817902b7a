"""Object-level metrics on a fill-invariant foreground: shape, colour, texture and boundary sharpness.

Each metric here measures one property of the image's foreground object and
is built to ignore the others (the selectivity matrix of
:mod:`denoisefeat.metrics.selectivity` checks it on DiffShapes counterfactual pairs):

* the **foreground** is found from *chromaticity* ``rgb / (r + g + b)``, the
  colour with its brightness divided out.  A texture that darkens and
  lightens one colour (stripes, checkers, dots) has one chromaticity, so the
  foreground has no holes where the texture is dark, and a grey-ish
  background has a chromaticity near ``(1/3, 1/3, 1/3)``.  The distance of
  every pixel's chromaticity from the background's (the median over the
  image border), rescaled so that the background is 0 and the object 1, is a
  *coverage estimate* ``c``; the foreground mask is ``c > 0.5``
  (:func:`object_coverage`, :func:`object_mask`);
* **shape** (:func:`object_mask_iou`): IoU of the foreground masks of an
  image and its reference (layout: outline and position);
* **colour** (:func:`object_color`, :func:`object_color_distance`): the
  median value-normalised colour ``rgb / max(r, g, b)`` over the eroded
  foreground (brightness — and so the texture's dark phase — divided out),
  and the CIEDE2000 difference of those colours;
* **texture** (:func:`texture_spectrum`, :func:`texture_spectrum_distance`):
  the power spectrum of the relative luminance modulation
  ``L / mean(L) - 1`` inside the eroded foreground, pooled into
  orientation x frequency bins (colour and brightness divide out; the
  outline is eroded away), and the L1 distance of two such spectra measured
  on the same pixels (the common interior of both objects);
* **edges** (:func:`boundary_width`): the width of the foreground's
  boundary ramp, ``sum |grad c| / sum |grad c|^2`` over a band around the
  boundary: the total variation of ``c`` (one per unit of boundary length,
  whatever the ramp) over its Dirichlet energy (one over the ramp width per
  unit length), so that it depends on the ramp's width only, not on the
  outline's length or the fill.

Everything is vectorised numpy (and :mod:`scipy.ndimage` morphology) over
the batch.  Sizes in pixels are given at a 32 px reference and scale with
the image (``size / 32``), so that a 64 px image is measured as a finer
rendering of the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from denoisefeat.metrics import shape as _shape
from denoisefeat.metrics._common import (
    as_float_result,
    luminance,
    prepare_images,
    prepare_pair,
)

__all__ = [
    "TEXTURE_ORIENTATIONS",
    "TEXTURE_FREQUENCIES",
    "object_coverage",
    "object_mask",
    "object_mask_iou",
    "object_color",
    "object_color_distance",
    "texture_spectrum",
    "texture_spectrum_distance",
    "TextureStatistics",
    "texture_statistics",
    "boundary_width",
]

_REFERENCE_SIZE = 32
# Chromaticity denominator guard (black pixels): rgb / (r + g + b + eps).
_CHROMA_EPS = 1e-3
# Below this chromaticity contrast between object and background there is no object.
_MIN_CONTRAST = 0.02
#: Number of orientation bins of :func:`texture_spectrum` over [0, pi).
TEXTURE_ORIENTATIONS = 8
#: Centre frequencies of :func:`texture_spectrum`'s bins in cycles/pixel at the 32 px
#: reference size (half-octave steps); at ``size`` px they are multiplied by ``32 / size``.
TEXTURE_FREQUENCIES: tuple[float, ...] = tuple(float(2.0 ** (-4 + k / 2)) for k in range(7))


def _scale(a: np.ndarray) -> float:
    return min(a.shape[-2:]) / _REFERENCE_SIZE


def _flat(x: np.ndarray, tail: int) -> np.ndarray:
    return x.reshape((-1,) + x.shape[x.ndim - tail:])


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion of (n, H, W) masks by a 3x3 square, ``iterations`` times (outside = background)."""
    if iterations <= 0 or mask.shape[0] == 0:
        return mask
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, structure=np.ones((1, 3, 3), bool), iterations=iterations)


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0 or mask.shape[0] == 0:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((1, 3, 3), bool), iterations=iterations)


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median over the last axis of ``values`` (n, m) where ``mask`` (n, m); NaN where empty."""
    v = np.where(mask, values, np.nan)
    out = np.full(values.shape[0], np.nan)
    has = mask.any(axis=1)
    if has.any():
        out[has] = np.nanmedian(v[has], axis=1)
    return out


def _coverage(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage estimate ``c`` (n, H, W) in [0, 1] and whether an object was found (n,), for (n, C, H, W).

    RGB images use chromaticity; grey images (C = 1) their grey level.
    """
    n, channels, h, w = a.shape
    chroma = a / (a.sum(axis=1, keepdims=True) + _CHROMA_EPS) if channels == 3 else a
    border = np.zeros((h, w), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    ground = np.median(chroma[:, :, border], axis=-1)  # (n, 3)
    d = np.sqrt(((chroma - ground[:, :, None, None]) ** 2).sum(axis=1)).reshape(n, -1)
    d_bg = np.median(d[:, border.ravel()], axis=1)
    # Two-means (isodata) threshold of the distances, vectorised over the batch.
    t = 0.5 * (d.min(axis=1) + d.max(axis=1))
    for _ in range(10):
        above = d > t[:, None]
        n_above = above.sum(axis=1)
        mean_above = np.where(n_above > 0, (d * above).sum(axis=1) / np.maximum(n_above, 1), t)
        n_below = d.size // max(n, 1) - n_above
        mean_below = np.where(n_below > 0, (d * ~above).sum(axis=1) / np.maximum(n_below, 1), t)
        t = 0.5 * (mean_above + mean_below)
    d_fg = _masked_median(d, d > t[:, None])
    d_fg = np.where(np.isnan(d_fg), d_bg, d_fg)
    found = (d_fg - d_bg) > _MIN_CONTRAST
    beta = (d - d_bg[:, None]) / np.where(found, d_fg - d_bg, 1.0)[:, None]
    beta = np.where(found[:, None], np.clip(beta, 0.0, 1.0), 0.0)
    if channels != 3:
        return beta.reshape(n, h, w), found
    # Chromaticity mixes by brightness: a pixel covering a fraction c of an object of channel
    # sum S_fg on a background of sum S_bg has the object's share beta = c S_fg / (c S_fg + (1 - c) S_bg)
    # of its chromaticity; invert it with the medians of S over the object and the border.
    total = a.sum(axis=1).reshape(n, -1)
    s_bg = np.median(total[:, border.ravel()], axis=1)
    s_fg = _masked_median(total, beta > 0.5)
    s_fg = np.where(np.isnan(s_fg) | (s_fg <= 0), s_bg, s_fg)
    s_bg, s_fg = s_bg[:, None], s_fg[:, None]
    denominator = beta * s_bg + (1.0 - beta) * s_fg
    c = np.where(denominator > 0, beta * s_bg / np.where(denominator > 0, denominator, 1.0), beta)
    return c.reshape(n, h, w), found


def _prepare(images, metric, channel_axis, channels=(1, 3)):
    return prepare_images(images, metric=metric, channel_axis=channel_axis, channels=channels, unit_range=True)


def object_coverage(images, *, channel_axis=-3):
    """Fill-invariant coverage estimate of the foreground object.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        RGB (C = 3) or grey (C = 1) images in [0, 1].
    channel_axis : int, optional
        Axis of the channels (default -3).

    Returns
    -------
    coverage : ndarray of float64, shape (..., H, W)
        ``c`` in [0, 1]: 0 on the background, 1 on the object.

    Notes
    -----
    With chromaticity ``x = rgb / (r + g + b + 1e-3)``, ``d`` the distance of
    each pixel's ``x`` from the median ``x`` of the image border, ``d_bg`` the
    border's median ``d`` and ``d_fg`` the median ``d`` above a two-means
    (isodata) threshold, ``beta = clip((d - d_bg) / (d_fg - d_bg), 0, 1)`` is the
    object's share of the pixel's chromaticity.  Chromaticity mixes in
    proportion to brightness, so with ``S_fg`` and ``S_bg`` the median channel
    sums ``r + g + b`` of the object (``beta > 0.5``) and of the border, the
    coverage is ``c = beta S_bg / (beta S_bg + (1 - beta) S_fg)``.  An image whose
    ``d_fg - d_bg`` is below 0.02 (no coloured object) has ``c = 0``.
    Chromaticity is unchanged by a texture that scales one colour's
    brightness, so ``c`` ignores such textures.  Grey images use the grey
    level instead of the chromaticity (and are not fill-invariant).
    """
    a = _prepare(images, "object_coverage", channel_axis)
    c, _ = _coverage(_flat(a, 3))
    return as_float_result(c.reshape(a.shape[:-3] + a.shape[-2:]))


def object_mask(images, *, channel_axis=-3):
    """Fill-invariant foreground mask ``object_coverage(images) > 0.5``.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    mask : ndarray of bool, shape (..., H, W)
        The object's pixels (all False where no object is found).

    See Also
    --------
    object_coverage : the coverage estimate and how it is computed.
    """
    a = _prepare(images, "object_mask", channel_axis)
    c, _ = _coverage(_flat(a, 3))
    return (c > 0.5).reshape(a.shape[:-3] + a.shape[-2:])


def object_mask_iou(images, reference, *, channel_axis=-3):
    """IoU of the fill-invariant foreground masks of images and their reference.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    iou : ndarray of float64, shape (...)
        In [0, 1], higher = closer; 1 where both masks are empty.

    See Also
    --------
    object_mask : the masks compared.
    """
    x, y, shape = prepare_pair(images, reference, metric="object_mask_iou", channel_axis=channel_axis,
                               channels=(1, 3), unit_range=True)
    mx = _coverage(_flat(x, 3))[0].reshape(x.shape[:-3] + x.shape[-2:]) > 0.5
    my = _coverage(_flat(y, 3))[0].reshape(y.shape[:-3] + y.shape[-2:]) > 0.5
    return as_float_result(np.broadcast_to(_shape.iou_of_masks(mx, my), shape))


def _interior(mask: np.ndarray, scale: float) -> np.ndarray:
    """The mask eroded by ``round(2 * scale)`` px (the boundary ramp and its anti-aliasing removed)."""
    return _erode(mask, max(1, int(round(2 * scale))))


def _color_of(a: np.ndarray, c: np.ndarray, scale: float) -> np.ndarray:
    """Median value-normalised colour (n, 3) over the eroded mask (else the mask, else the image)."""
    n = a.shape[0]
    mask = c > 0.5
    region = _interior(mask, scale)
    region = np.where(region.any(axis=(1, 2))[:, None, None], region, mask)
    region = np.where(region.any(axis=(1, 2))[:, None, None], region, True)
    value = a.max(axis=1, keepdims=True)
    normalised = np.where(value > _CHROMA_EPS, a / np.maximum(value, _CHROMA_EPS), 1.0)
    flat = normalised.reshape(n, 3, -1)
    r = region.reshape(n, 1, -1)
    v = np.where(r, flat, np.nan)
    return np.nanmedian(v, axis=-1) if n else np.zeros((0, 3))


def _lab_of_rgb(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.clip(rgb, 0.0, 1.0)[..., None, :])[..., 0, :]


def object_color(images, *, channel_axis=-3):
    """Brightness-normalised colour of the foreground object.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    rgb : ndarray of float64, shape (..., 3)
        Per channel, the median of ``rgb / max(r, g, b)`` over the object's
        interior (the mask eroded by ``2 * size / 32`` px; the mask where that
        is empty, the whole image where no object is found).  The largest
        component is 1 for a saturated object.

    Notes
    -----
    Dividing by the brightest channel removes the brightness, and so the
    dark phase of a texture that scales the colour; eroding removes the
    boundary pixels mixed with the background.
    """
    a = _prepare(images, "object_color", channel_axis, channels=(3,))
    f = _flat(a, 3)
    c, _ = _coverage(f)
    return as_float_result(_color_of(f, c, _scale(a)).reshape(a.shape[:-3] + (3,)))


def object_color_distance(images, reference, *, channel_axis=-3):
    """CIEDE2000 difference of the brightness-normalised object colours of images and reference.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    delta_e : ndarray of float64, shape (...)
        ``deltaE_ciede2000(lab(object_color(images)), lab(object_color(reference)))``,
        lower = closer (0 for the same colour).

    See Also
    --------
    object_color : the colours compared.
    """
    from skimage.color import deltaE_ciede2000

    x, y, shape = prepare_pair(images, reference, metric="object_color_distance", channel_axis=channel_axis,
                               channels=(3,), unit_range=True)
    lab = []
    for z in (x, y):
        f = _flat(z, 3)
        lab.append(_lab_of_rgb(_color_of(f, _coverage(f)[0], _scale(z))).reshape(z.shape[:-3] + (3,)))
    lx, ly = np.broadcast_arrays(lab[0], lab[1])
    return as_float_result(np.broadcast_to(deltaE_ciede2000(lx, ly, channel_axis=-1), shape))


def _spectrum_weights(h: int, w: int) -> np.ndarray:
    """Soft (triangular) bin weights (n_orient * n_freq, h, w) of the FFT frequencies of an h x w image."""
    scale = min(h, w) / _REFERENCE_SIZE
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    rho = np.hypot(kx, ky) * scale  # cycles/pixel at the reference size
    theta = np.mod(np.arctan2(ky, kx), np.pi)
    n_o = TEXTURE_ORIENTATIONS
    pos = theta / (np.pi / n_o)  # in bin units, circular
    o_w = np.stack([np.clip(1 - np.abs(((pos - k + n_o / 2) % n_o) - n_o / 2), 0, 1) for k in range(n_o)])
    centers = np.log2(np.asarray(TEXTURE_FREQUENCIES))
    step = centers[1] - centers[0]
    with np.errstate(divide="ignore"):
        lr = np.log2(np.where(rho > 0, rho, np.nan))
    f_w = np.stack([np.nan_to_num(np.clip(1 - np.abs(lr - c) / step, 0, 1)) for c in centers])
    return (o_w[:, None] * f_w[None, :]).reshape(-1, h, w)


def _relative_modulation(a: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``L / mean_region(L) - 1`` on each boolean region (n, H, W), 0 elsewhere, and the regions' pixel counts."""
    lum = luminance(a)
    count = region.sum(axis=(1, 2))
    mean = (lum * region).sum(axis=(1, 2)) / np.maximum(count, 1)
    ok = (count > 0) & (mean > _CHROMA_EPS)
    return np.where(region & ok[:, None, None], lum / np.where(ok, mean, 1.0)[:, None, None] - 1.0, 0.0), count


def _spectrum_of(a: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pooled relative-modulation power spectra (n, n_orient, n_freq) of prepared (n, 3, H, W) images
    over boolean regions (n, H, W)."""
    n, _, h, w = a.shape
    s, count = _relative_modulation(a, region)
    power = np.abs(np.fft.fft2(s)) ** 2 / (h * w * np.maximum(count, 1))[:, None, None]
    pooled = np.einsum("nyx,kyx->nk", power, _spectrum_weights(h, w))
    return pooled.reshape(n, TEXTURE_ORIENTATIONS, len(TEXTURE_FREQUENCIES))


def texture_spectrum(images, *, channel_axis=-3):
    """Oriented band energies of the foreground object's texture.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    spectrum : ndarray of float64, shape (..., TEXTURE_ORIENTATIONS, len(TEXTURE_FREQUENCIES))
        Energy of the relative luminance modulation per orientation of the
        wave vector (bin ``k`` centred on ``k * 180 / 8`` degrees, measured
        from the x axis towards +y, i.e. downwards in the image) and per
        frequency (bins centred on :data:`TEXTURE_FREQUENCIES` x ``32 / size``
        cycles/pixel).  The sum over the bins is at most the variance of
        ``L / mean(L)`` over the object's interior (0 for a solid object).

    Notes
    -----
    With ``L`` the luminance, ``I`` the object's interior (the mask of
    :func:`object_mask` eroded by ``2 * size / 32`` px) and
    ``s = (L / mean_I(L) - 1)`` on ``I`` (0 elsewhere), the power spectrum
    ``|FFT(s)|^2 / (H W |I|)`` (whose sum is ``mean_I(s^2)``, Parseval) is
    pooled with triangular weights: linear in orientation between adjacent
    bins (circularly), linear in ``log2`` frequency between adjacent
    half-octave bins.  Dividing by the mean luminance removes the object's
    colour; the erosion removes its outline.
    """
    a = _prepare(images, "texture_spectrum", channel_axis)
    f = _flat(a, 3)
    spec = _spectrum_of(f, _interior(_coverage(f)[0] > 0.5, _scale(a)))
    return as_float_result(spec.reshape(a.shape[:-3] + spec.shape[1:]))


def texture_spectrum_distance(images, reference, *, region="common", channel_axis=-3):
    """L1 distance between the texture spectra of images and their reference.

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    reference : array_like, shape (..., 3, H, W)
        Reference images, broadcasting against ``images`` over the leading axes.
    region : {"common", "own"}, optional
        Where the spectra are measured: ``"common"`` (default), the same pixels
        in both images, the interior of the intersection of their object masks
        (each image's own interior where the intersection's is empty);
        ``"own"``, each image's own interior, as in :func:`texture_spectrum`.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    distance : ndarray of float64, shape (...)
        ``sum |S(images) - S(reference)|`` over the orientation x frequency
        bins of :func:`texture_spectrum`, lower = closer (0 for the same texture).

    Notes
    -----
    On a common region the comparison sees the texture only: a moved or
    reshaped object is compared where both images show it, and the window's
    spectral leakage is the same on both sides.  Measured each on its own
    interior (``region="own"``), small objects (a few texture periods across)
    leak enough of their outline into the spectrum that shape and position
    move the distance by a third to a half of what a texture change does on
    DiffShapes at 32 px.

    See Also
    --------
    texture_spectrum : the spectra compared.
    """
    if region not in ("common", "own"):
        raise ValueError(f"texture_spectrum_distance: region must be 'common' or 'own', got {region!r}")
    x, y, shape = prepare_pair(images, reference, metric="texture_spectrum_distance", channel_axis=channel_axis,
                               channels=(1, 3), unit_range=True)
    x, y = np.broadcast_to(x, shape + x.shape[-3:]), np.broadcast_to(y, shape + y.shape[-3:])
    fx, fy = _flat(x, 3), _flat(y, 3)
    return as_float_result(_texture_distance(fx, fy, _coverage(fx)[0], _coverage(fy)[0], _scale(x),
                                             region=region).reshape(shape))


@dataclass(frozen=True, eq=False)
class TextureStatistics:
    """Spectral statistics of the texture inside each image's object (see :func:`texture_statistics`).

    Attributes
    ----------
    freq : ndarray of float64, shape (n_bins,)
        Radial frequency of each bin, cycles/pixel.
    radial_power : ndarray of float64, shape (n, n_bins)
        Radially averaged power spectrum of the texture signal, per object pixel.
    angular_power : ndarray of float64, shape (n, n_angles)
        Share of the texture band's power in each orientation bin over ``[0, pi)``.
    peak_frequency : ndarray of float64, shape (n,)
        Frequency of the strongest radial bin of the texture band.
    peak_share : ndarray of float64, shape (n,)
        Share of the texture band's power within one bin of the peak (1: one sharp frequency).
    orientation_order : ndarray of float64, shape (n,)
        ``|sum P exp(2 i theta)| / sum P`` over the texture band: 1 for straight stripes of one
        orientation, about 0 for isotropic power (and for the four-fold checker and dot grids).
    spectral_coherence : ndarray of float64, shape (n,)
        Share of the texture band's power in the 3 x 3 frequency bins around its strongest wave
        vector ``k`` and around ``-k``: near 1 for straight stripes, about 1/2 for checkers and
        dot grids (two of their four fundamentals), lower when phase drift spreads the power.
    autocorrelation : ndarray of float64, shape (n,)
        Overlap-normalised autocorrelation of the band-passed signal at one period along ``k``
        (the best lag ``t k / |k|^2``, ``0.8 <= t <= 1.25``), over its value at lag 0: about 1
        for a phase-coherent periodic texture, lower for wavy or incoherent ones.
    mask_fraction : ndarray of float64, shape (n,)
        Fraction of the image inside the eroded foreground.
    """

    freq: np.ndarray
    radial_power: np.ndarray
    angular_power: np.ndarray
    peak_frequency: np.ndarray
    peak_share: np.ndarray
    orientation_order: np.ndarray
    spectral_coherence: np.ndarray
    autocorrelation: np.ndarray
    mask_fraction: np.ndarray


def _orientation_statistics(power: np.ndarray, band: tuple[float, float], n_angles: int):
    """Orientation order, angular power, spectral coherence and the peak wave vector ``(k_y, k_x)``
    of the band of full-plane power spectra (n, H, H)."""
    from denoisefeat.frequency import radial_frequency

    n, size, _ = power.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = radial_frequency((size, size))
    bins = (radius >= band[0]) & (radius <= band[1])
    # theta and theta + pi are the same wave: the order parameter of exp(2 i theta).
    theta = np.mod(np.arctan2(fy, fx), np.pi)[bins]
    band_2d = power[:, bins]
    band_sum = np.maximum(band_2d.sum(axis=1), 1e-12)
    order = np.abs((band_2d * np.exp(2j * theta)[None]).sum(axis=1)) / band_sum
    which = np.minimum((theta / np.pi * n_angles).astype(np.int64), n_angles - 1)
    angular = np.stack([band_2d[:, which == k].sum(axis=1) for k in range(n_angles)], axis=1) / band_sum[:, None]
    # The strongest wave vector k of the band and the share of the band's power in the 3 x 3 bins
    # around k and -k: a coherent grating puts its power there, phase drift spreads it into sidebands.
    peak_y, peak_x = np.unravel_index(np.where(bins[None], power, -1.0).reshape(n, -1).argmax(axis=1), (size, size))
    near_peak = np.zeros((n, size, size), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            for sign in (1, -1):
                near_peak[np.arange(n), (sign * peak_y + dy) % size, (sign * peak_x + dx) % size] = True
    coherence = np.where(near_peak & bins[None], power, 0.0).sum(axis=(1, 2)) / band_sum
    return order, angular, coherence, (fy[peak_y, peak_x], fx[peak_y, peak_x])


def _period_autocorrelation(signal, mask, k_y, k_x, band, rows) -> np.ndarray:
    """Overlap-normalised autocorrelation of the band-passed signal at about one period along k.

    ``corr(d) = sum s(x) s(x+d) / sum m(x) m(x+d)`` over ``corr(0)``, the best of the lags
    ``t k / |k|^2`` for ``t`` in [0.8, 1.25] (the peak bin only approximates the frequency), for the
    images ``rows``.  Zero-padded to twice the size so that lags do not wrap around; evaluated at
    non-integer lags as Fourier sums; band-passed so that the texture's harmonics (which alias on the
    pixel grid) and the object's edge do not count.
    """
    n, size, _ = signal.shape
    padded = 2 * size
    gy, gx = np.meshgrid(np.fft.fftfreq(padded), np.fft.fftfreq(padded), indexing="ij")
    padded_band = (np.hypot(gy, gx) >= band[0]) & (np.hypot(gy, gx) <= band[1])
    signal_power = np.abs(np.fft.fft2(signal, s=(padded, padded))) ** 2 * padded_band[None]
    mask_power = np.abs(np.fft.fft2(mask, s=(padded, padded))) ** 2
    k2 = np.maximum(k_y**2 + k_x**2, 1e-12)
    stretch = np.linspace(0.8, 1.25, 19)
    autocorrelation = np.zeros(n)
    for i in np.flatnonzero(rows):
        lag_y, lag_x = stretch * k_y[i] / k2[i], stretch * k_x[i] / k2[i]
        waves = np.cos(2 * np.pi * (gy[..., None] * lag_y + gx[..., None] * lag_x))  # (padded, padded, lags)
        at_lags = np.einsum("yx,yxl->l", signal_power[i], waves) / np.maximum(
            np.einsum("yx,yxl->l", mask_power[i], waves), 1.0)
        autocorrelation[i] = at_lags.max() / max(signal_power[i].sum() / mask_power[i].sum(), 1e-12)
    return autocorrelation


def texture_statistics(images, *, band=(0.08, 0.32), n_angles=18, channel_axis=-3) -> TextureStatistics:
    """Frequency, orientation and phase coherence of the foreground object's texture.

    A diagnosis of generated textures against real ones (is a stripe's frequency, its
    orientation or its phase lost?), not a per-step feature: it returns several statistics per
    image.  The signal is the relative luminance modulation ``L / mean(L) - 1`` inside the
    eroded foreground, as in :func:`texture_spectrum`.

    Parameters
    ----------
    images : array_like, shape (n, 3, H, H)
        Square RGB images in [0, 1].
    band : (float, float), optional
        Radial frequencies of the texture band, cycles/pixel (DiffShapes' fundamentals lie in
        0.1 to 0.25 at 32 px; a checker's at ``sqrt(2)`` times its frequency).
    n_angles : int, optional
        Orientation bins of ``angular_power``.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    TextureStatistics
        Per-image arrays; an image without an object (or a solid one) has zero band power, and
        zero ``peak_share``, ``spectral_coherence`` and ``autocorrelation``.

    Notes
    -----
    The radial spectrum is :func:`denoisefeat.frequency.radial_power_spectrum` of the masked
    signal, divided by the object's share of the image (power per object pixel).
    """
    from denoisefeat.frequency import radial_power_spectrum

    a = _prepare(images, "texture_statistics", channel_axis, channels=(3,))
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"texture_statistics needs images of shape (n, 3, H, H), got {a.shape}")
    n, _, size, _ = a.shape
    region = _interior(_coverage(a)[0] > 0.5, _scale(a))
    signal, area = _relative_modulation(a, region)
    mask = region.astype(np.float64)
    spectrum = radial_power_spectrum(signal)
    radial_power = spectrum.power / (np.maximum(area, 1.0) / size**2)[:, None]  # power per object pixel
    in_band = (spectrum.freq >= band[0]) & (spectrum.freq <= band[1])
    band_power = np.where(in_band, radial_power, 0.0)
    peak = band_power.argmax(axis=1)
    near = np.abs(np.arange(len(spectrum.freq))[None, :] - peak[:, None]) <= 1
    textured = band_power.sum(axis=1) > 1e-12  # solid objects (and no object) have no band power
    power = np.abs(np.fft.fft2(signal)) ** 2
    order, angular, coherence, (k_y, k_x) = _orientation_statistics(power, band, n_angles)
    autocorrelation = _period_autocorrelation(signal, mask, k_y, k_x, band, textured & (area > 0))
    return TextureStatistics(
        freq=np.asarray(spectrum.freq, dtype=np.float64),
        radial_power=radial_power,
        angular_power=angular,
        peak_frequency=np.asarray(spectrum.freq)[peak],
        peak_share=np.where(textured, (band_power * near).sum(axis=1) / np.maximum(band_power.sum(axis=1), 1e-12), 0.0),
        orientation_order=np.where(textured, order, 0.0),
        spectral_coherence=np.where(textured, coherence, 0.0),
        autocorrelation=autocorrelation,
        mask_fraction=area / size**2,
    )


def _texture_distance(fx, fy, cx, cy, scale, *, region):
    """L1 spectrum distances (n,) of flat prepared batches with their coverage estimates."""
    own_x, own_y = _interior(cx > 0.5, scale), _interior(cy > 0.5, scale)
    if region == "common":
        common = _interior((cx > 0.5) & (cy > 0.5), scale)
        has = common.any(axis=(1, 2))[:, None, None]
        own_x, own_y = np.where(has, common, own_x), np.where(has, common, own_y)
    return np.abs(_spectrum_of(fx, own_x) - _spectrum_of(fy, own_y)).sum(axis=(1, 2))


def _width_of(c: np.ndarray, band: int) -> np.ndarray:
    """``sum |grad c| / sum |grad c|^2`` over the cells (n, H-1, W-1) near the boundary of ``c > 0.5``."""
    mask = c > 0.5
    near = _dilate(mask, band) & ~_erode(mask, band)
    cell = near[:, :-1, :-1] | near[:, 1:, :-1] | near[:, :-1, 1:] | near[:, 1:, 1:]
    # Gradient at the cell centres (the 2 x 2 average of forward differences).
    gx = 0.5 * ((c[:, :-1, 1:] - c[:, :-1, :-1]) + (c[:, 1:, 1:] - c[:, 1:, :-1]))
    gy = 0.5 * ((c[:, 1:, :-1] - c[:, :-1, :-1]) + (c[:, 1:, 1:] - c[:, :-1, 1:]))
    g = np.hypot(gx, gy) * cell
    energy = (g * g).sum(axis=(1, 2))
    return np.where(energy > 0, g.sum(axis=(1, 2)) / np.where(energy > 0, energy, 1.0), 0.0)


def boundary_width(images, *, band=None, channel_axis=-3):
    """Width of the foreground object's boundary ramp, in pixels (lower = sharper).

    Parameters
    ----------
    images : array_like, shape (..., 3, H, W)
        RGB images in [0, 1].
    band : int, optional
        Half-width in pixels of the band around the boundary where the ramp
        is measured (default ``round(3 * size / 32)``, at least 2); it must
        hold the whole ramp.
    channel_axis : int, optional
        Axis of the RGB channels (default -3).

    Returns
    -------
    width : ndarray of float64, shape (...)
        ``sum |grad c| / sum |grad c|^2`` over the band, ``c`` the coverage
        estimate of :func:`object_coverage`; 0 where no object is found
        (no boundary, no ramp).

    Notes
    -----
    Across a boundary whose coverage rises from 0 to 1, ``|grad c|``
    integrates to 1 along the normal whatever the profile, and ``|grad c|^2``
    to ``1 / w`` for a linear ramp of width ``w`` (``1 / (2 sqrt(pi) sigma)``
    for a step blurred by a Gaussian of standard deviation ``sigma``).  The
    ratio is therefore the ramp width ``w`` (``2 sqrt(pi) sigma ~ 3.54 sigma``
    for a Gaussian edge, whose 10-90 % rise is ``2.56 sigma``), independent of
    the boundary's length (the outline) and, since ``c`` comes from
    chromaticity, of the fill's texture (only approximately inside a ramp
    several pixels wide, where the brightness correction of
    :func:`object_coverage` uses the object's median brightness: a
    blurred edge of ``sigma = 2`` px over strong stripes measures ~15 % less).  Gradients are the 2 x 2 averages of
    forward differences at the pixel-cell centres.  A sampled linear ramp of
    width ``w`` measures about ``w + 0.5`` px (its sampled end kinks); a smooth
    (Gaussian) edge measures its continuum value.  A sharp anti-aliased
    boundary (a one-pixel ramp) measures about 1.6 to 1.8 px on DiffShapes
    (the sampling of a sub-pixel ramp and the 2 x 2 gradient add about half a pixel).
    """
    a = _prepare(images, "boundary_width", channel_axis)
    if band is None:
        band = max(2, int(round(3 * _scale(a))))
    elif isinstance(band, bool) or not isinstance(band, (int, np.integer)) or band < 1:
        raise ValueError(f"boundary_width: band must be a positive integer number of pixels, got {band!r}")
    f = _flat(a, 3)
    c, _ = _coverage(f)
    return as_float_result(_width_of(c, int(band)).reshape(a.shape[:-3]))
