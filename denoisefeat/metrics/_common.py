"""Shared input handling for :mod:`denoisefeat.metrics`.

Every public metric goes through :func:`prepare_images` (and
:func:`prepare_pair` when it compares against a reference), so that all of
them agree on the conventions:

* images are real arrays of shape ``(..., C, H, W)`` (the channel axis is
  moved to ``-3`` on entry; ``channel_axis=None`` means grey images of shape
  ``(..., H, W)``), computed in float64;
* NaN or infinite values raise ``ValueError`` naming the metric, and so do
  values outside [0, 1] for metrics whose thresholds or colour conversions
  assume that range;
* the reference broadcasts against the batch over the leading axes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__: list[str] = []  # private module

# Tolerance of the [0, 1] check (float rounding of clamped images).
_UNIT_TOL = 1e-6


def prepare_images(
    images,
    *,
    metric: str,
    channel_axis: int | None = -3,
    channels: tuple[int, ...] | None = (1, 3),
    name: str = "images",
    unit_range: bool = False,
) -> np.ndarray:
    """Validate ``images`` and return a float64 array of shape (..., C, H, W).

    ``unit_range=True`` for metrics whose thresholds or colour conversions
    assume values in [0, 1]: values outside (beyond a 1e-6 tolerance) raise.
    """
    a = np.asarray(images)
    if a.dtype == bool or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise TypeError(f"{metric}: {name} must be a real numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if channel_axis is None:
        if a.ndim < 2:
            raise ValueError(
                f"{metric}: {name} must have at least 2 dimensions (H, W), got shape {a.shape}"
            )
        a = a[..., None, :, :]
    else:
        if a.ndim < 3:
            raise ValueError(
                f"{metric}: {name} must have at least 3 dimensions (..., C, H, W), "
                f"got shape {a.shape}; "
                "pass channel_axis=None for grey images of shape (..., H, W)"
            )
        try:
            a = np.moveaxis(a, channel_axis, -3)
        except np.exceptions.AxisError as err:
            raise ValueError(
                f"{metric}: channel_axis={channel_axis} is invalid for {name} of shape {a.shape}"
            ) from err
    if channels is not None and a.shape[-3] not in channels:
        raise ValueError(
            f"{metric}: {name} must have {' or '.join(map(str, channels))} channels "
            "on the channel axis, "
            f"got {a.shape[-3]} (shape {a.shape} after moving the channel axis to -3)"
        )
    if a.shape[-1] == 0 or a.shape[-2] == 0:
        raise ValueError(f"{metric}: {name} have an empty spatial extent {a.shape[-2:]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{metric}: {name} contain NaN or infinite values")
    if unit_range and a.size:
        lo, hi = a.min(), a.max()
        if lo < -_UNIT_TOL or hi > 1 + _UNIT_TOL:
            raise ValueError(
                f"{metric}: {name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "rescale them first, e.g. (x + 1) / 2 for [-1, 1] images or x / 255 for 8-bit ones"
            )
    return a


def prepare_pair(
    images,
    reference,
    *,
    metric: str,
    channel_axis: int | None = -3,
    channels: tuple[int, ...] | None = (1, 3),
    unit_range: bool = False,
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Validate an image batch and its reference.

    Returns ``(x, y, batch_shape)`` with ``x`` and ``y`` of shape (..., C, H, W)
    (not broadcast against each other, so that reference-side work is done
    once per reference image) and ``batch_shape`` the broadcast leading shape.
    """
    x = prepare_images(
        images, metric=metric, channel_axis=channel_axis, channels=channels, unit_range=unit_range
    )
    y = prepare_images(
        reference,
        metric=metric,
        channel_axis=channel_axis,
        channels=channels,
        name="reference",
        unit_range=unit_range,
    )
    if x.shape[-3:] != y.shape[-3:]:
        raise ValueError(
            f"{metric}: images (C, H, W) = {x.shape[-3:]} and "
            f"reference (C, H, W) = {y.shape[-3:]} differ"
        )
    return x, y, broadcast_leading(x.shape[:-3], y.shape[:-3], metric=metric, what="reference")


def broadcast_leading(
    a: tuple[int, ...], b: tuple[int, ...], *, metric: str, what: str
) -> tuple[int, ...]:
    """Broadcast two leading (batch) shapes, with an error naming the metric."""
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError as err:
        raise ValueError(
            f"{metric}: the {what}'s leading shape {b} does not broadcast "
            f"against the images' leading shape {a}"
        ) from err


def prepare_map(maps, *, metric: str, name: str, shape_hw: tuple[int, int]) -> np.ndarray:
    """Validate a per-pixel map (mask, edge map) of shape (..., H, W) and return it as bool.

    Boolean maps are used as they are; numeric maps (anti-aliased coverage,
    0/1 maps) are thresholded at 0.5.
    """
    m = np.asarray(maps)
    if m.ndim < 2 or m.shape[-2:] != tuple(shape_hw):
        raise ValueError(
            f"{metric}: {name} must have shape (..., {shape_hw[0]}, {shape_hw[1]}), got {m.shape}"
        )
    if m.dtype == bool:
        return m
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise TypeError(f"{metric}: {name} must be boolean or numeric, got dtype {m.dtype}")
    if np.isnan(m).any():
        raise ValueError(f"{metric}: {name} contain NaN values")
    return m > 0.5


def check_data_range(data_range, *, metric: str) -> float:
    """``data_range`` is required, positive and finite: it is never guessed."""
    try:
        r = float(data_range)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{metric}: data_range must be a positive number, got {data_range!r}"
        ) from err
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"{metric}: data_range must be positive and finite, got {data_range!r}")
    return r


def luminance(a: np.ndarray) -> np.ndarray:
    """Luminance of an image batch: the one luminance of denoisefeat (metrics, features, figures).

    Parameters
    ----------
    a : numpy.ndarray, shape (..., C, H, W)
        Grey (C = 1) or RGB images.

    Returns
    -------
    numpy.ndarray, shape (..., H, W)
        Grey images as they are; RGB images converted with :func:`skimage.color.rgb2gray`
        (ITU-R BT.709 weights 0.2125, 0.7154, 0.0721).
    """
    if a.shape[-3] == 1:
        return a[..., 0, :, :]
    from skimage.color import rgb2gray

    return rgb2gray(np.moveaxis(a, -3, -1))


def per_image(func: Callable[[np.ndarray], np.ndarray], planes: np.ndarray) -> np.ndarray:
    """Apply a per-image (2-D) scikit-image function to every (H, W) plane of ``planes``.

    ``func`` must return an array of the same shape for every plane; the result
    has shape ``planes.shape[:-2] + out.shape``.
    """
    lead = planes.shape[:-2]
    flat = planes.reshape((-1,) + planes.shape[-2:])
    if flat.shape[0] == 0:
        out0 = np.asarray(func(np.zeros(planes.shape[-2:], dtype=planes.dtype)))
        return np.zeros(lead + out0.shape, dtype=out0.dtype)
    outs = [np.asarray(func(p)) for p in flat]
    return np.stack(outs).reshape(lead + outs[0].shape)


def as_float_result(values: np.ndarray) -> np.ndarray:
    """Results are float64 arrays (0-d arrays included, never Python scalars)."""
    return np.asarray(values, dtype=np.float64)
