"""Correlation across samples between a layer's activity and a feature's change, per step.

At each step ``s`` and for each (feature, layer) pair, the samples give pairs
``(activity[s], Δfeature[s])``; their Pearson or Spearman correlation says whether samples whose
layer is more active at that step also change that feature more at that step.  Each correlation
comes with its Fisher-z interval and the z-test of the same standard error
(:func:`denoisefeat.analyses.inference.fisher_z_inference`: the interval excludes 0 exactly when
p < 1 − ci); p-values are adjusted with
Benjamini–Hochberg over the whole grid (features × layers × steps).  The result is an attribution
table with step windows ``[s, s + 1)``.

The inputs:

* :func:`activity` — one number per (sample, step) from recorded activations (the L2 norm, mean or
  RMS over channels and positions, e.g. of ``channel_mean`` or ``spatial_energy`` records);
* :func:`feature_change` — the per-step change of features given per (sample, step), aligned so that
  step ``s`` holds the change brought by the denoiser call of step ``s``.

Correlation is not attribution by intervention: a layer's activity and a feature's change can share a
cause (the noise level, the condition).  Use :mod:`denoisefeat.analyses.regression` to control for
step effects and sample clustering, and ablation to test causes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from denoisefeat.analyses.inference import fisher_z_inference
from denoisefeat.analyses.table import COLUMNS, benjamini_hochberg, validate

__all__ = [
    "ACTIVITY_OF", "METHODS", "STATS", "activity", "aligned", "as_activity", "as_features", "change_scale", "correlate",
    "feature_change",
]

METHODS = ("pearson", "spearman")
STATS = ("norm", "mean", "rms")
ACTIVITY_OF = ("change", "value")
_LEAD = ("sample", "branch", "step")


# ---------------------------------------------------------------------------------------------
# Preparing the inputs
# ---------------------------------------------------------------------------------------------
def activity(
    acts: xr.DataArray,
    *,
    of: str = "change",
    stat: str = "norm",
    keep: Sequence[str] = (),
    branch: str | None = None,
) -> xr.DataArray:
    """Summarise recorded activations to one number per (sample, step).

    Parameters
    ----------
    acts : xarray.DataArray, dims (sample, [branch,] step, ...)
        E.g. ``run.acts("mid_block", "channel_mean")``.
    of : {"change", "value"}
        What is summarised at step ``s``.  ``"change"`` (default): the change of the layer's
        output brought by the denoiser call of step ``s``, ``acts[s] − acts[s − 1]`` (step 0 has
        none and is dropped), which is what pairs with :func:`feature_change`: a per-step change
        of a feature is related to the per-step change of a layer.  ``"value"``: the activations
        themselves (a level paired with a change: on the planted-truth models it names the wrong
        module for texture, see docs/reading-attribution-tables.md).  ``"change"`` needs
        consecutive recorded steps.
    stat : {"norm", "mean", "rms"}
        Over every dim after ``step`` except ``keep``: the L2 norm, the mean, or the root mean square.
    keep : sequence of str
        Dims to keep (e.g. ``("band",)`` for ``band_energy`` records).
    branch : {"cond", "uncond"}, optional
        Required when ``acts`` has a ``branch`` dim (classifier-free guidance).

    Returns
    -------
    xarray.DataArray, dims (sample, step, *keep)
        Named after the layer.
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(map(repr, STATS))}; got {stat!r}.")
    if of not in ACTIVITY_OF:
        raise ValueError(f"of must be one of {', '.join(map(repr, ACTIVITY_OF))}; got {of!r}.")
    if not isinstance(acts, xr.DataArray) or not {"sample", "step"} <= set(acts.dims):
        raise ValueError(
            "acts must be an xarray.DataArray with dims (sample, [branch,] step, ...), e.g. run.acts(layer)."
        )
    if "branch" in acts.dims:
        branches = list(acts["branch"].values) if "branch" in acts.coords else list(range(acts.sizes["branch"]))
        if branch not in branches:
            raise ValueError(f"acts has a branch dim: pass branch= one of {branches}.")
        acts = acts.sel(branch=branch)
    unknown = [d for d in keep if d not in acts.dims]
    if unknown:
        raise ValueError(f"keep: dims {unknown} are not in acts {acts.dims}.")
    reduce = [d for d in acts.dims if d not in (*_LEAD, *keep)]
    values = acts.astype(float)
    if of == "change":
        steps = values["step"].values if "step" in values.coords else np.arange(values.sizes["step"])
        if len(steps) < 2 or not np.all(np.diff(steps) == 1):
            raise ValueError(
                f"activity(of='change') needs at least 2 consecutive recorded steps; got steps {list(steps)[:10]}. "
                "Record every step of the window (record_steps=None) or use of='value'."
            )
        values = values.diff("step", label="upper")  # the change brought by the call of step s
    if stat == "norm":
        out = np.sqrt((values**2).sum(reduce, skipna=False))
    elif stat == "mean":
        out = values.mean(reduce, skipna=False)
    else:
        out = np.sqrt((values**2).mean(reduce, skipna=False))
    name = acts.attrs.get("layer") or (str(acts.name).split("/")[0] if acts.name is not None else None)
    return out.transpose("sample", "step", *keep).rename(name)


def feature_change(features, *, measured_on: str = "output") -> xr.Dataset:
    """Per-step change of features given per (sample, step).

    Parameters
    ----------
    features : xarray.DataArray or xarray.Dataset, dims (sample, step)
        Feature values per step (one feature, or a Dataset of them).  Steps must be consecutive.
    measured_on : {"output", "input"}
        What the features were measured on.  ``"output"``: the denoiser call's result at that step
        (x̂0, ``images``); the change brought by step ``s`` is ``f[s] − f[s − 1]`` and step 0 has
        none.  ``"input"``: x_t; the change brought by step ``s`` is ``f[s + 1] − f[s]`` and the
        last step has none.

    Returns
    -------
    xarray.Dataset, dims (sample, step)
        Δ of every feature, labelled with the step whose denoiser call brought it.
    """
    if measured_on not in ("output", "input"):
        raise ValueError(f"measured_on must be 'output' (x̂0, images) or 'input' (x_t); got {measured_on!r}.")
    features = as_features(features)
    steps = features["step"].values
    if len(steps) < 2 or not np.all(np.diff(steps) == 1):
        raise ValueError(f"feature_change needs at least 2 consecutive steps; got steps {steps.tolist()[:10]}.")
    return features.diff("step", label="upper" if measured_on == "output" else "lower")


def as_features(features) -> xr.Dataset:
    """A Dataset of (sample, step) features from a DataArray or Dataset; a clear error otherwise.

    Parameters
    ----------
    features : xarray.Dataset or xarray.DataArray
        ``(sample, step)`` features.

    Returns
    -------
    xarray.Dataset
        One ``(sample, step)`` variable per feature.
    """
    if isinstance(features, xr.DataArray):
        features = features.to_dataset(name=features.name or "feature")
    if not isinstance(features, xr.Dataset) or not features.data_vars:
        raise ValueError("features must be an xarray.DataArray or non-empty Dataset with dims (sample, step).")
    for name, values in features.data_vars.items():
        if set(values.dims) != {"sample", "step"}:
            raise ValueError(f"feature {name!r} must have dims (sample, step); it has {values.dims}.")
    return _with_index(features.transpose("sample", "step"))


def as_activity(activity) -> xr.Dataset:
    """A Dataset ``{layer: (sample, step)}`` from a mapping, Dataset or DataArray (with a ``layer`` dim).

    Parameters
    ----------
    activity : mapping, xarray.Dataset or xarray.DataArray
        ``{layer: (sample, step)}``, a Dataset of such variables, or a DataArray with a ``layer`` dim.

    Returns
    -------
    xarray.Dataset
        One ``(sample, step)`` variable per layer.
    """
    if isinstance(activity, xr.DataArray):
        if "layer" in activity.dims:
            activity = activity.to_dataset(dim="layer")
        else:
            activity = activity.to_dataset(name=activity.name or "activity")
    elif isinstance(activity, Mapping) and not isinstance(activity, xr.Dataset):
        if not activity:
            raise ValueError("activity is empty: give {layer: (sample, step) DataArray}.")
        activity = xr.Dataset({str(k): v for k, v in activity.items()})
    if not isinstance(activity, xr.Dataset) or not activity.data_vars:
        raise ValueError("activity must be {layer: DataArray (sample, step)}, a Dataset of those, or a DataArray.")
    for name, values in activity.data_vars.items():
        if set(values.dims) != {"sample", "step"}:
            raise ValueError(
                f"activity of {name!r} must have dims (sample, step); it has {values.dims}. "
                "Summarise activations with activity(acts, stat=...) first."
            )
    return _with_index(activity.transpose("sample", "step"))


def _with_index(data: xr.Dataset) -> xr.Dataset:
    for dim in ("sample", "step"):
        if dim not in data.coords:
            data = data.assign_coords({dim: np.arange(data.sizes[dim])})
    return data


def aligned(activity, feature_change) -> tuple[xr.Dataset, xr.Dataset]:
    """Both inputs as Datasets over their common samples and steps.

    Parameters
    ----------
    activity : mapping, xarray.Dataset or xarray.DataArray
        Layer activity, as for :func:`as_activity`.
    feature_change : xarray.Dataset or xarray.DataArray
        Per-step feature change, as for :func:`as_features`.

    Returns
    -------
    (xarray.Dataset, xarray.Dataset)
        The activity and the feature change, over the samples and steps both have.
    """
    acts, changes = as_activity(activity), as_features(feature_change)
    acts, changes = xr.align(acts, changes, join="inner")
    if acts.sizes["sample"] == 0 or acts.sizes["step"] == 0:
        raise ValueError("activity and feature_change share no (sample, step) coordinates.")
    return acts, changes


# ---------------------------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------------------------
def _pearson(x, y, axis=-1):
    xm = x - x.mean(axis=axis, keepdims=True)
    ym = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (xm * ym).sum(axis=axis) / np.sqrt((xm**2).sum(axis=axis) * (ym**2).sum(axis=axis))


def _spearman(x, y, axis=-1):
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


def change_scale(change: np.ndarray) -> float:
    """The scale of a feature's per-step change: its SD over every finite (sample, step) value.

    Correlation and regression express their standardised effect (``effect_std``) in this unit,
    one per feature over the whole run, so that a step where the feature hardly changes (late
    steps of a converged feature, whose changes are at rounding level) cannot rank with the steps
    that make the feature.

    Parameters
    ----------
    change : numpy.ndarray
        The feature's per-step change, any shape (NaN where undefined).

    Returns
    -------
    float
        Its standard deviation over every finite value.

    Raises
    ------
    ValueError
        The feature never changes (the standardised effect is undefined).
    """
    values = np.asarray(change, dtype=float)
    values = values[np.isfinite(values)]
    scale = float(np.std(values)) if values.size else 0.0
    if not scale > 0:
        raise ValueError(
            "a feature's per-step change is constant over the run (or has no finite value): its "
            "standardised effect is undefined; drop it from the features."
        )
    return scale


def _cell(x, y, *, method, alpha) -> tuple[float, float, float, float]:
    """r, CI low, CI high, p of one (feature, layer, step) cell (Fisher z); NaN when undefined."""
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (np.nan,) * 4
    r = float((_pearson if method == "pearson" else _spearman)(x, y))
    result = fisher_z_inference(r, len(x), method=method, alpha=alpha)
    return result.estimate, result.ci_low, result.ci_high, result.p


def correlate(
    activity,
    feature_change,
    *,
    method: str = "pearson",
    ci: float = 0.95,
) -> pd.DataFrame:
    """Correlate layer activity with feature change across samples, per (feature, layer, step).

    Parameters
    ----------
    activity : mapping of str to xarray.DataArray, xarray.Dataset or xarray.DataArray
        ``{layer: (sample, step)}`` activity statistics (see :func:`activity`), or a DataArray
        ``(sample, step, layer)``.
    feature_change : xarray.Dataset or xarray.DataArray, dims (sample, step)
        Per-step changes of one or more features (see :func:`feature_change`).  Matched to
        ``activity`` by the ``sample`` and ``step`` coordinates (their intersection is used).
    method : {"pearson", "spearman"}
    ci : float
        Confidence level of the Fisher-z intervals.

    Returns
    -------
    pandas.DataFrame
        The attribution table: ``feature``, ``layer``, ``step_start`` = s, ``step_stop`` = s + 1,
        ``method``, ``effect`` (the correlation coefficient), ``effect_std`` (the slope of the
        change on standardised activity, ``r · SD_s(Δf)``, in units of :func:`change_scale`:
        ``r`` weighted by how much the feature changes at that step), ``ci_low``, ``ci_high`` (the
        Fisher-z interval) and ``p`` (the z-test of the
        same standard error: the interval excludes 0 exactly when ``p < 1 − ci``), ``p_adj``
        (Benjamini–Hochberg over all rows), ``n`` (samples with both values finite);
        ``disruption`` and ``specificity`` are NaN (not an intervention).  Cells with fewer than 4
        samples or a constant input are NaN.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci!r}.")
    acts, changes = aligned(activity, feature_change)
    rows = []
    steps = acts["step"].values
    for feature in changes.data_vars:
        dy = changes[feature].values.astype(float)
        scale = change_scale(dy)
        for layer in acts.data_vars:
            x_all = acts[layer].values.astype(float)
            for j, step in enumerate(steps):
                x, y = x_all[:, j], dy[:, j]
                finite = np.isfinite(x) & np.isfinite(y)
                r, low, high, p = _cell(x[finite], y[finite], method=method, alpha=1 - ci)
                # effect_std: the slope of the change on standardised activity, r · SD_s(Δf), in
                # units of the run's change scale; a correlation does not intervene: no
                # disruption, no specificity
                effect_std = r * float(np.std(y[finite])) / scale if np.isfinite(r) else np.nan
                rows.append((str(feature), str(layer), int(step), int(step) + 1, method, r, low, high, p, np.nan,
                             int(finite.sum()), effect_std, np.nan, np.nan))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["p_adj"] = benjamini_hochberg(table["p"].to_numpy())
    table.attrs.update(alpha=1 - ci, ci_level=ci, inference="fisher-z")
    return validate(table)
