"""The selectivity matrix: how much each feature metric responds to each DiffShapes factor.

A metric earns its feature's name when it responds to its own factors far more
than to the others.  :func:`metric_selectivity` measures, for every metric and
every factor of :data:`~denoisefeat.toy.diffshapes.FACTORS`, the median
response over counterfactual pairs ``(a, b)`` that differ in that factor only
(:func:`~denoisefeat.toy.diffshapes.counterfactual_pairs`):

* ``|m(b) - m(a)|`` for a property metric (``needs_reference is None``);
* ``|m(b, ref=a) - m(a, ref=a)|`` for a metric compared with a reference
  image (the scans compare against the clean final image).

:func:`selectivity_ratio` turns the matrix into one number per metric: its
smallest median response to an own factor (:data:`OWN_FACTORS` of its group in
:data:`denoisefeat.metrics.FEATURE_GROUPS`) over its largest median response to
any other factor; the criterion is a ratio of at least 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import xarray as xr

from denoisefeat.metrics.registry import FEATURE_GROUPS, METRICS, compute_metrics
from denoisefeat.toy.diffshapes import FACTORS, counterfactual_pairs

__all__ = ["OWN_FACTORS", "metric_selectivity", "selectivity_ratio"]

#: The factors each feature group should respond to (the others it should ignore).
OWN_FACTORS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "shape": ("shape", "position"),
    "color": ("color",),
    "texture": ("texture_kind", "texture_orientation", "texture_frequency"),
    "edges": ("edge_sharpness",),
})


def _default_metrics() -> list[str]:
    return list(dict.fromkeys(name for names in FEATURE_GROUPS.values() for name in names))


def metric_selectivity(
    *,
    metrics: Sequence[str] | None = None,
    factors: Sequence[str] = FACTORS,
    n_pairs: int = 64,
    size: int = 32,
    seed: int = 0,
) -> xr.DataArray:
    """Median response of each metric to each single-factor change on DiffShapes.

    Parameters
    ----------
    metrics : sequence of str, optional
        Names in :data:`denoisefeat.metrics.METRICS` whose reference is nothing
        or an image; default every metric of
        :data:`denoisefeat.metrics.FEATURE_GROUPS`.
    factors : sequence of str, optional
        Factors of :data:`denoisefeat.toy.diffshapes.FACTORS` (default all).
    n_pairs : int, optional
        Counterfactual pairs per factor (at least 1; use 64 or more for the criterion).
    size : int, optional
        Image size in pixels (at least 16).
    seed : int, optional
        Non-negative seed of the pairs (the same seed for every factor).

    Returns
    -------
    xarray.DataArray
        Dimensions ``(metric, factor)``: the median over pairs of the absolute
        response (see the module docstring), in the metric's units.  Attributes
        ``n_pairs``, ``size`` and ``seed``.

    Raises
    ------
    ValueError
        For unknown factors or metrics, metrics that need a mask or edge map
        reference, or invalid ``n_pairs``, ``size`` or ``seed``.
    """
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a sequence of names, not the string {metrics!r}")
    names = _default_metrics() if metrics is None else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    unusable = [m for m in names if METRICS[m].needs_reference not in (None, "image")]
    if unusable:
        raise ValueError(f"metrics {unusable} need a mask or edge-map reference; only None or 'image' work here")
    factors = list(factors)
    bad = [f for f in factors if f not in FACTORS]
    if bad or not factors:
        raise ValueError(f"unknown factors {bad}; valid factors are {', '.join(FACTORS)}")
    if int(n_pairs) != n_pairs or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    values = np.empty((len(names), len(factors)))
    for j, factor in enumerate(factors):
        a, b = counterfactual_pairs(int(n_pairs), factor=factor, seed=seed, size=size)
        on_b = compute_metrics(b.images, a.images, names=names)
        on_a = compute_metrics(a.images, a.images, names=names)
        for i, name in enumerate(names):
            # A property metric ignores the reference: |m(b) - m(a)|; otherwise |m(b, ref=a) - m(a, ref=a)|.
            response = np.abs(on_b[name] - on_a[name])
            values[i, j] = np.nanmedian(response) if np.isfinite(response).any() else np.nan
    return xr.DataArray(
        values,
        dims=("metric", "factor"),
        coords={"metric": names, "factor": factors},
        name="median_response",
        attrs={"n_pairs": int(n_pairs), "size": int(size), "seed": int(seed),
               "description": "median |m(b) - m(a)| (property) or |m(b, ref=a) - m(a, ref=a)| (reference) "
                              "over DiffShapes counterfactual pairs differing in one factor"},
    )


def selectivity_ratio(
    matrix: xr.DataArray,
    *,
    groups: Mapping[str, Sequence[str]] = FEATURE_GROUPS,
    own_factors: Mapping[str, Sequence[str]] = OWN_FACTORS,
) -> xr.DataArray:
    """Smallest own-factor response over largest other-factor response, per metric.

    Parameters
    ----------
    matrix : xarray.DataArray
        Output of :func:`metric_selectivity`, dimensions ``(metric, factor)``.
    groups : mapping of str to sequence of str, optional
        Feature group -> metric names (default :data:`denoisefeat.metrics.FEATURE_GROUPS`);
        every metric of ``matrix`` must belong to one group.
    own_factors : mapping of str to sequence of str, optional
        Feature group -> its own factors (default :data:`OWN_FACTORS`).

    Returns
    -------
    xarray.DataArray
        Dimension ``metric``: ``min(own) / max(other)`` (``inf`` where every
        other response is 0); a coordinate ``group`` names each metric's group.
        The criterion is ``>= 5``.

    Raises
    ------
    ValueError
        If ``matrix`` lacks the dimensions, a metric is in no group, or a
        group's own factors are not all in the matrix (or leave no other factor).
    """
    if not isinstance(matrix, xr.DataArray) or set(matrix.dims) != {"metric", "factor"}:
        raise ValueError("matrix must be an xarray.DataArray with dimensions (metric, factor)")
    group_of = {name: group for group, names in groups.items() for name in names}
    factors = [str(f) for f in matrix["factor"].values]
    ratios, labels = [], []
    for metric in matrix["metric"].values:
        if metric not in group_of:
            raise ValueError(f"metric {metric!r} belongs to no group of {dict(groups)}")
        group = group_of[metric]
        own = list(own_factors.get(group, ()))
        others = [f for f in factors if f not in own]
        if not own or any(f not in factors for f in own) or not others:
            raise ValueError(f"group {group!r}: own factors {own} must all be in the matrix ({factors}), "
                             "with at least one other factor")
        row = matrix.sel(metric=metric)
        low = float(row.sel(factor=own).min())
        high = float(row.sel(factor=others).max())
        ratios.append(np.inf if high == 0 and low > 0 else low / high if high > 0 else np.nan)
        labels.append(group)
    return xr.DataArray(np.asarray(ratios), dims=("metric",),
                        coords={"metric": matrix["metric"].values, "group": ("metric", labels)},
                        name="selectivity_ratio")
