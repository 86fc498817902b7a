"""The registry of default per-step feature metrics.

:data:`METRICS` maps a feature name to a :class:`MetricSpec`: the callable,
its documented range, its direction and which reference it needs.
:func:`compute_metrics` evaluates a selection of them on an image batch,
sharing the expensive intermediate results (canny edge maps, CIELAB
conversion, foreground masks) between the metrics that use them; a later
``features(run)`` calls it for every (sample, step).

Conventions of every registered callable: ``func(images, reference)`` with
``images`` RGB in [0, 1], shape ``(..., 3, H, W)`` (``data_range`` is 1), and
``reference`` what :attr:`MetricSpec.needs_reference` names (or ``None``),
broadcasting against the images' leading dimensions.  Several metrics share
one callable that returns ``(..., k)``; :attr:`MetricSpec.index` selects
theirs.  Components whose reference is missing (``reference=None``) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from denoisefeat.metrics import color as _color
from denoisefeat.metrics import edges as _edges
from denoisefeat.metrics import foreground as _foreground
from denoisefeat.metrics import shape as _shape
from denoisefeat.metrics import similarity as _similarity
from denoisefeat.metrics import texture as _texture
from denoisefeat.metrics._common import luminance, prepare_images, prepare_map, prepare_pair

__all__ = ["MetricSpec", "METRICS", "REFERENCE_KINDS", "FEATURE_GROUPS", "compute_metrics"]

#: What a metric compares against: ``None`` (nothing), ``"image"`` (the
#: reference image, normally the final image of the trajectory), ``"mask"``
#: (a ground-truth object mask (..., H, W)), ``"edges"`` (a ground-truth edge
#: map (..., H, W)).
REFERENCE_KINDS: tuple[str | None, ...] = (None, "image", "mask", "edges")
_KINDS = ("similarity", "edges", "texture", "shape", "color")
_DATA_RANGE = 1.0
_BAND_NAMES = ("low", "mid", "high")


@dataclass(frozen=True)
class MetricSpec:
    """A registered per-image feature metric.

    Attributes
    ----------
    name : str
        Feature name (the key in :data:`METRICS`).
    func : callable
        ``func(images, reference) -> ndarray`` of shape ``(...)``, or
        ``(..., k)`` when ``index`` is set; see the module docstring.
    range : tuple of float
        ``(low, high)`` bounds of the value (``math.inf`` where unbounded).
    direction : bool or None
        ``True``: higher = closer to the reference; ``False``: lower = closer;
        ``None``: not a similarity (a property of the image itself, or, for
        ``color_consistency``, a signed deviation whose ideal is 0).
    needs_reference : {None, "image", "mask", "edges"}
        What ``reference`` must be, see :data:`REFERENCE_KINDS`.
    kind : {"similarity", "edges", "texture", "shape", "color"}
        The feature family.
    index : int or None
        Component of ``func``'s last axis holding this metric, or ``None``.
    """

    name: str
    func: Callable
    range: tuple[float, float]
    direction: bool | None
    needs_reference: str | None
    kind: str
    index: int | None = None

    def __post_init__(self):
        if self.needs_reference not in REFERENCE_KINDS:
            raise ValueError(
                f"needs_reference must be one of {REFERENCE_KINDS}, got {self.needs_reference!r}"
            )
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")

    def __call__(self, images, reference=None) -> np.ndarray:
        """Evaluate this metric alone: ``func(images, reference)``, component selected."""
        if self.needs_reference is not None and reference is None:
            raise ValueError(f"{self.name}: needs a reference ({self.needs_reference!r})")
        out = self.func(images, reference)
        return out if self.index is None else out[..., self.index]


# ----------------------------------------------------------------------------
# Registered callables (groups share intermediate results)
# ----------------------------------------------------------------------------


def _nan(shape, k):
    return np.full(tuple(shape) + (k,), np.nan)


def _ssim(images, reference):
    return _similarity.ssim(images, reference, data_range=_DATA_RANGE)


def _ms_ssim(images, reference):
    return _similarity.ms_ssim(images, reference, data_range=_DATA_RANGE)


def _psnr(images, reference):
    return _similarity.psnr(images, reference, data_range=_DATA_RANGE)


def _band_ssim(images, reference):
    """SSIM of the DEFAULT_BANDS low (= lowpass_ssim with its default cutoff), mid, high bands."""
    from denoisefeat.frequency import DEFAULT_BANDS

    bands = {k: DEFAULT_BANDS[k] for k in _BAND_NAMES}
    return _similarity.band_ssim(images, reference, data_range=_DATA_RANGE, bands=bands)


def _edge_group(images, reference):
    """[density, sharpness, precision, recall, f1] from one canny pass per image."""
    metric = "edge_density/edge_sharpness/edge_prf"
    a = prepare_images(images, metric=metric, unit_range=True)
    lum = luminance(a)
    e = _edges.edges_of_luminance(
        lum, method="canny", sigma=1.0, low_threshold=None, high_threshold=None, metric=metric
    )
    density = e.mean(axis=(-2, -1))
    sharp = _edges.sharpness_from(lum, e, radius=3)
    if reference is None:
        prf = _nan(e.shape[:-2], 3)
    else:
        _, y, _ = prepare_pair(images, reference, metric=metric, unit_range=True)
        r = _edges.edges_of_luminance(
            luminance(y),
            method="canny",
            sigma=1.0,
            low_threshold=None,
            high_threshold=None,
            metric=metric,
        )
        prf = _edges.prf_from(e, r, tolerance=1)
        density, sharp = (
            np.broadcast_to(density, prf.shape[:-1]),
            np.broadcast_to(sharp, prf.shape[:-1]),
        )
    return np.concatenate([density[..., None], sharp[..., None], prf], axis=-1)


def _edge_gt(images, edges):
    return _edges.edge_prf(images, edges)


def _glcm(images, reference):
    return _texture.glcm_features(images)


def _lbp(images, reference):
    return _texture.lbp_distance(images, reference)


def _wavelet(images, reference):
    """Levels 2-3 of db2; images under 24 px have no level 3 and use level 2 alone."""
    import pywt

    a = np.asarray(images)
    max_level = pywt.dwt_max_level(min(a.shape[-2:]), pywt.Wavelet("db2").dec_len)
    levels = tuple(j for j in (2, 3) if j <= max_level) or (1,)
    return _texture.wavelet_texture_energy(images, levels=levels)


def _mask_group(images, reference):
    """[mask_iou, hu_moment_distance] from one thresholding pass per image."""
    metric = "mask_iou/hu_moment_distance"
    x, y, _ = prepare_pair(images, reference, metric=metric)
    img_mask, ref_mask = _shape.pair_masks(x, y, method="otsu", metric=metric)
    iou = _shape.iou_of_masks(img_mask, ref_mask)
    hu = np.abs(
        _shape.log_hu(_shape.hu_of_masks(img_mask))
        - _shape.log_hu(_shape.hu_of_masks(ref_mask))
    )
    return np.stack([iou, hu.sum(axis=-1)], axis=-1)


def _mask_gt(images, masks):
    return _shape.mask_iou_ground_truth(images, masks)


def _lab_group(images, reference):
    """[L, a, b, delta_e2000, color_consistency] from one CIELAB conversion per image."""
    metric = "mean_lab/delta_e2000/color_consistency"
    a = prepare_images(images, metric=metric, channels=(3,), unit_range=True)
    lab = _color.lab_of(a)
    mean = lab.mean(axis=(-3, -2))
    if reference is None:
        return np.concatenate([mean, _nan(mean.shape[:-1], 2)], axis=-1)
    _, y, shape = prepare_pair(images, reference, metric=metric, channels=(3,), unit_range=True)
    lab_y = _color.lab_of(y)
    de = _color.delta_e_of_lab(lab, lab_y).mean(axis=(-2, -1))
    m, _ = _shape.threshold_masks(luminance(y), method="otsu", polarity="auto", metric=metric)
    cons = _color.lab_spread(lab, m) - _color.lab_spread(lab_y, m)
    mean = np.broadcast_to(mean, shape + (3,))
    return np.concatenate([mean, de[..., None], cons[..., None]], axis=-1)


def _hue(images, reference):
    return _color.hue_histogram_distance(images, reference)


def _colorfulness(images, reference):
    return _color.colorfulness(images)


def _color_spread_gt(images, masks):
    """Colour spread inside the ground-truth mask (the ideal of a solid object is 0)."""
    return _color.color_spread(images, mask=masks)


def _object_group(images, reference):
    """[object_mask_iou, object_color_distance, texture_spectrum_distance, boundary_width]
    from one coverage estimate per image and per reference image (see :mod:`~denoisefeat.metrics.foreground`)."""
    f = _foreground
    metric = "object_mask_iou/object_color_distance/texture_spectrum_distance/boundary_width"
    a = prepare_images(images, metric=metric, unit_range=True)
    lead, hw, scale = a.shape[:-3], a.shape[-2:], min(a.shape[-2:]) / f._REFERENCE_SIZE
    flat = a.reshape((-1,) + a.shape[-3:])
    cov = f._coverage(flat)[0]
    width = f._width_of(cov, max(2, int(round(3 * scale)))).reshape(lead)
    if reference is None:
        return np.concatenate([_nan(lead, 3), width[..., None]], axis=-1)
    _, y, shape = prepare_pair(a, reference, metric=metric, unit_range=True)
    flat_y = y.reshape((-1,) + y.shape[-3:])
    cov_y = f._coverage(flat_y)[0]
    if a.shape[-3] == 3:
        from skimage.color import deltaE_ciede2000

        lab = f._lab_of_rgb(f._color_of(flat, cov, scale)).reshape(lead + (3,))
        lab_y = f._lab_of_rgb(f._color_of(flat_y, cov_y, scale)).reshape(y.shape[:-3] + (3,))
        de = deltaE_ciede2000(*np.broadcast_arrays(lab, lab_y), channel_axis=-1)
    else:  # grey images have no colour
        de = np.full(shape, np.nan)

    def full(z, tail):  # broadcast a per-image array (lead..., *tail) to the batch shape, flattened
        return np.broadcast_to(z, shape + tail).reshape((-1,) + tail)

    cx = full(cov.reshape(lead + hw), hw)
    cy = full(cov_y.reshape(y.shape[:-3] + hw), hw)
    iou = _shape.iou_of_masks(cx > 0.5, cy > 0.5).reshape(shape)
    tex = f._texture_distance(full(a, a.shape[-3:]), full(y, y.shape[-3:]), cx, cy, scale,
                              region="common").reshape(shape)
    return np.stack([iou, np.broadcast_to(de, shape), tex, np.broadcast_to(width, shape)], axis=-1)


def _build() -> Mapping[str, MetricSpec]:
    inf = math.inf
    specs = [
        # similarity
        MetricSpec("ssim", _ssim, (-1.0, 1.0), True, "image", "similarity"),
        MetricSpec("ms_ssim", _ms_ssim, (0.0, 1.0), True, "image", "similarity"),
        MetricSpec("psnr", _psnr, (0.0, inf), True, "image", "similarity"),
        # band_ssim of the low band is lowpass_ssim (below, kind "shape").
        MetricSpec("band_ssim_mid", _band_ssim, (-1.0, 1.0), True, "image", "similarity", 1),
        MetricSpec("band_ssim_high", _band_ssim, (-1.0, 1.0), True, "image", "similarity", 2),
        # edges
        MetricSpec("edge_density", _edge_group, (0.0, 1.0), None, None, "edges", 0),
        MetricSpec("edge_sharpness", _edge_group, (0.0, 1.0), None, None, "edges", 1),
        MetricSpec("edge_precision", _edge_group, (0.0, 1.0), True, "image", "edges", 2),
        MetricSpec("edge_recall", _edge_group, (0.0, 1.0), True, "image", "edges", 3),
        MetricSpec("edge_f1", _edge_group, (0.0, 1.0), True, "image", "edges", 4),
        MetricSpec("edge_precision_gt", _edge_gt, (0.0, 1.0), True, "edges", "edges", 0),
        MetricSpec("edge_recall_gt", _edge_gt, (0.0, 1.0), True, "edges", "edges", 1),
        MetricSpec("edge_f1_gt", _edge_gt, (0.0, 1.0), True, "edges", "edges", 2),
        # texture
        MetricSpec("glcm_contrast", _glcm, (0.0, 31.0**2), None, None, "texture", 0),
        MetricSpec("glcm_homogeneity", _glcm, (0.0, 1.0), None, None, "texture", 1),
        MetricSpec("glcm_energy", _glcm, (0.0, 1.0), None, None, "texture", 2),
        MetricSpec("glcm_correlation", _glcm, (-1.0, 1.0), None, None, "texture", 3),
        MetricSpec("lbp_distance", _lbp, (0.0, 1.0), False, "image", "texture"),
        MetricSpec("wavelet_texture_energy", _wavelet, (0.0, 1.0), None, None, "texture"),
        # shape
        MetricSpec("mask_iou", _mask_group, (0.0, 1.0), True, "image", "shape", 0),
        MetricSpec("hu_moment_distance", _mask_group, (0.0, inf), False, "image", "shape", 1),
        MetricSpec("lowpass_ssim", _band_ssim, (-1.0, 1.0), True, "image", "shape", 0),
        MetricSpec("mask_iou_gt", _mask_gt, (0.0, 1.0), True, "mask", "shape"),
        # colour
        MetricSpec("lab_l", _lab_group, (0.0, 100.0), None, None, "color", 0),
        MetricSpec("lab_a", _lab_group, (-128.0, 127.0), None, None, "color", 1),
        MetricSpec("lab_b", _lab_group, (-128.0, 127.0), None, None, "color", 2),
        MetricSpec("delta_e2000", _lab_group, (0.0, inf), False, "image", "color", 3),
        MetricSpec("color_consistency", _lab_group, (-130.0, 130.0), None, "image", "color", 4),
        MetricSpec("color_spread_gt", _color_spread_gt, (0.0, 130.0), False, "mask", "color"),
        MetricSpec("hue_histogram_distance", _hue, (0.0, 180.0), False, "image", "color"),
        MetricSpec("colorfulness", _colorfulness, (0.0, inf), None, None, "color"),
        # object-level metrics on a fill-invariant foreground (selective: see FEATURE_GROUPS)
        MetricSpec("object_mask_iou", _object_group, (0.0, 1.0), True, "image", "shape", 0),
        MetricSpec("object_color_distance", _object_group, (0.0, inf), False, "image", "color", 1),
        MetricSpec("texture_spectrum_distance", _object_group, (0.0, inf), False, "image", "texture", 2),
        MetricSpec("boundary_width", _object_group, (0.0, inf), None, None, "edges", 3),
    ]
    return MappingProxyType({s.name: s for s in specs})


#: Every registered metric, by feature name.  See :class:`MetricSpec`.
#:
#: ``psnr`` is ``+inf`` for an image identical to its reference (the final
#: step against the final image); ``lowpass_ssim`` is the SSIM of the ``low``
#: band of :data:`denoisefeat.frequency.DEFAULT_BANDS` (computed with
#: ``band_ssim_mid`` and ``band_ssim_high`` from one band split);
#: ``wavelet_texture_energy`` uses levels 2-3 (level 2 alone below 24 px);
#: ``color_spread_gt`` is the colour spread inside the ground-truth mask
#: (ideal 0 for DiffShapes' solid objects).
METRICS: Mapping[str, MetricSpec] = _build()


#: The metrics that measure each feature group, chosen for selectivity: on DiffShapes
#: counterfactual pairs (:func:`denoisefeat.toy.diffshapes.counterfactual_pairs`) each responds
#: to its group's own factors at least 5 times more than to any other factor, at 32 and 64 px
#: (the selectivity matrix of :func:`denoisefeat.metrics.selectivity.metric_selectivity`, tested).
#:
#: ``shape``: IoU of the chromaticity-based (fill-invariant) foreground masks (outline and
#: position); ``color``: CIEDE2000 between the brightness-normalised median object colours;
#: ``texture``: L1 distance of the oriented band energies of the relative luminance modulation
#: on the common object interior; ``edges``: width of the object's boundary ramp in pixels.
#: See :mod:`denoisefeat.metrics.foreground`.
FEATURE_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "edges": ("boundary_width",),
    "texture": ("texture_spectrum_distance",),
    "shape": ("object_mask_iou",),
    "color": ("object_color_distance",),
})


def compute_metrics(
    images, reference=None, *, masks=None, edges=None, names=None
) -> dict[str, np.ndarray]:
    """Evaluate registered metrics on an image batch, sharing intermediate results.

    Parameters
    ----------
    images : array_like, shape (..., C, H, W)
        Images in [0, 1], channels on axis -3 (RGB; grey images skip the
        colour metrics by default).
    reference : array_like, shape (..., C, H, W), optional
        Reference images (normally the final image of each trajectory,
        e.g. shape ``(sample, 1, C, H, W)`` for images ``(sample, step, C, H,
        W)``), for metrics with ``needs_reference == "image"``.
    masks : array_like, shape (..., H, W), optional
        Ground-truth object masks, for ``needs_reference == "mask"``.
    edges : array_like, shape (..., H, W), optional
        Ground-truth edge maps, for ``needs_reference == "edges"``.
    names : sequence of str, optional
        Metrics to compute.  Default: every registered metric whose reference
        is given (the "default set"; with ``reference`` only, all
        ``None`` and ``"image"`` metrics).

    Returns
    -------
    values : dict of str to ndarray of float64
        One array of shape ``(...)`` per metric (the broadcast leading shape
        of the inputs), in registry order.

    Raises
    ------
    KeyError
        For an unknown metric name.
    ValueError
        If a requested metric's reference is missing, or an input is invalid
        (NaN, wrong shape).

    Notes
    -----
    Metrics registered with the same callable are computed by one call
    (canny edges, CIELAB conversion, band split and foreground masks are
    computed once per image, and once per reference image), so computing
    the whole set costs much less than the sum of the public functions.
    ``data_range`` is 1 throughout.
    """
    a = prepare_images(images, metric="compute_metrics", unit_range=True)
    given = {
        None: True,
        "image": reference is not None,
        "mask": masks is not None,
        "edges": edges is not None,
    }
    refs = {"image": reference, "mask": masks, "edges": edges}
    if names is None:
        selected = [
            s
            for s in METRICS.values()
            if given[s.needs_reference] and not (s.kind == "color" and a.shape[-3] != 3)
        ]
    else:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            import difflib

            hints = {n: difflib.get_close_matches(n, list(METRICS), n=3) for n in unknown}
            raise KeyError(
                f"unknown metric(s) {hints} (name: close matches); known: {list(METRICS)}"
            )
        selected = [METRICS[n] for n in METRICS if n in set(names)]
        missing = [s.name for s in selected if not given[s.needs_reference]]
        if missing:
            raise ValueError(
                f"compute_metrics: metrics {missing} need a reference that was not given"
            )
    if reference is not None:
        prepare_pair(a, reference, metric="compute_metrics", unit_range=True)
    for key in ("mask", "edges"):
        if refs[key] is not None:
            prepare_map(refs[key], metric="compute_metrics", name=f"{key}s", shape_hw=a.shape[-2:])

    # Group the selected specs by callable; call each callable once.
    groups: dict[Callable, list[MetricSpec]] = {}
    for s in selected:
        groups.setdefault(s.func, []).append(s)
    values: dict[str, np.ndarray] = {}
    for func, specs in groups.items():
        # A group mixes reference-free metrics with those of one reference
        # kind; the reference is passed only if a selected metric needs it.
        kinds = {s.needs_reference for s in specs} - {None}
        ref = refs[kinds.pop()] if kinds else None
        out = func(a, ref)
        for s in specs:
            values[s.name] = np.asarray(
                out if s.index is None else out[..., s.index], dtype=np.float64
            )
    shape = np.broadcast_shapes(*(v.shape for v in values.values())) if values else a.shape[:-3]
    return {s.name: np.array(np.broadcast_to(values[s.name], shape)) for s in selected}
