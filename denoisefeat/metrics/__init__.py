"""Per-step feature metrics of image batches: similarity, edges, texture, shape, colour.

Functions first, in the style of scikit-image: each takes an image batch of
shape ``(..., C, H, W)`` (channel axis -3; leading dimensions are batch
dimensions, typically ``(sample, step)``), keyword-only options, and returns
one value per image, shape ``(...)``, or ``(..., k)`` where documented.
Metrics against a reference take a reference whose leading dimensions
broadcast against the batch (e.g. the final images ``(sample, 1, C, H, W)``).
Scales that matter (``data_range``) are required, never guessed; metrics
whose thresholds or colour conversions assume images in [0, 1] (edges, GLCM,
LBP, colour) raise ``ValueError`` for values outside [0, 1].  NaN inputs
raise ``ValueError`` naming the metric; constant images give defined values.

:data:`METRICS` registers the default per-step features (name, callable,
range, direction, reference needed, kind) and :func:`compute_metrics`
evaluates them on a batch, sharing intermediate results.

Modules: :mod:`~denoisefeat.metrics.similarity`,
:mod:`~denoisefeat.metrics.edges`, :mod:`~denoisefeat.metrics.texture`,
:mod:`~denoisefeat.metrics.shape`, :mod:`~denoisefeat.metrics.color`,
:mod:`~denoisefeat.metrics.foreground` (object-level metrics selective for one feature each,
:data:`FEATURE_GROUPS`),
:mod:`~denoisefeat.metrics.registry`; :mod:`~denoisefeat.metrics.device` computes the same
metrics batched in torch on the tensors' device.
"""

from denoisefeat.metrics._common import luminance
from denoisefeat.metrics.color import (
    color_consistency,
    color_spread,
    colorfulness,
    delta_e2000,
    hue_histogram,
    hue_histogram_distance,
    mean_lab,
)
from denoisefeat.metrics.edges import (
    edge_density,
    edge_map,
    edge_prf,
    edge_sharpness,
    edge_width_10_90,
)
from denoisefeat.metrics.foreground import (
    TEXTURE_FREQUENCIES,
    TEXTURE_ORIENTATIONS,
    TextureStatistics,
    boundary_width,
    object_color,
    object_color_distance,
    object_coverage,
    object_mask,
    object_mask_iou,
    texture_spectrum,
    texture_spectrum_distance,
    texture_statistics,
)
from denoisefeat.metrics.registry import (
    FEATURE_GROUPS,
    METRICS,
    REFERENCE_KINDS,
    MetricSpec,
    compute_metrics,
)
from denoisefeat.metrics.shape import (
    foreground_mask,
    hu_moment_distance,
    hu_moments,
    lowpass_ssim,
    mask_iou,
    mask_iou_ground_truth,
)
from denoisefeat.metrics.similarity import MS_SSIM_WEIGHTS, band_ssim, ms_ssim, psnr, ssim
from denoisefeat.metrics.texture import (
    GLCM_PROPERTIES,
    glcm_features,
    lbp_distance,
    lbp_histogram,
    wavelet_texture_energy,
)

__all__ = [
    # the luminance every metric, feature and figure uses
    "luminance",
    # similarity
    "ssim",
    "ms_ssim",
    "psnr",
    "band_ssim",
    "MS_SSIM_WEIGHTS",
    # edges
    "edge_map",
    "edge_density",
    "edge_sharpness",
    "edge_width_10_90",
    "edge_prf",
    # texture
    "glcm_features",
    "GLCM_PROPERTIES",
    "lbp_histogram",
    "lbp_distance",
    "wavelet_texture_energy",
    # shape
    "foreground_mask",
    "mask_iou",
    "mask_iou_ground_truth",
    "hu_moments",
    "hu_moment_distance",
    "lowpass_ssim",
    # colour
    "mean_lab",
    "delta_e2000",
    "hue_histogram",
    "hue_histogram_distance",
    "colorfulness",
    "color_spread",
    "color_consistency",
    # object-level (fill-invariant foreground)
    "object_coverage",
    "object_mask",
    "object_mask_iou",
    "object_color",
    "object_color_distance",
    "texture_spectrum",
    "texture_spectrum_distance",
    "TextureStatistics",
    "texture_statistics",
    "TEXTURE_ORIENTATIONS",
    "TEXTURE_FREQUENCIES",
    "boundary_width",
    # registry
    "FEATURE_GROUPS",
    "MetricSpec",
    "METRICS",
    "REFERENCE_KINDS",
    "compute_metrics",
]
