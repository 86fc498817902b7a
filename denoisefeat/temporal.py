"""When features emerge and stabilise during denoising, and how runs compare.

A *profile* is one feature trajectory per sample: a variable of a features Dataset
(:func:`denoisefeat.features`) with dims ``(sample, step)``, or one band of a
``(sample, step, band)`` variable, named ``variable[band]`` (``band_relative_error[low]``).

Progress
--------
Each sample's trajectory ``f(step)`` is normalised to its *progress*

    p(step) = (f(step) − f(first step)) / (f(last step) − f(first step)),

0 at the first step and 1 at the final one, whichever way the feature moves (a distance that
falls and a similarity that rises both go from 0 to 1).  Rules for awkward values:

* **Unbounded distances** — variables whose attributes declare the range ``[0, ∞)`` with
  direction "lower is closer" (``band_relative_error``, ``delta_e2000``,
  ``hu_moment_distance`` as :func:`denoisefeat.features` writes them) — are normalised
  on the bounded similarity scale ``1 / (1 + d)`` (``scale`` coordinate ``"1/(1+d)"``).  On the
  linear scale the first step dominates: x̂0 at ᾱ ≈ 0 is far off (its high band can be a hundred
  times the final band's energy), so every later step would look converged.  On the bounded
  scale a relative band error ``d`` reads as the fraction ``1 / (1 + d)`` of the band that is
  right, and stabilisation with tolerance 0.1 means ``d ≲ 0.1``.  Other variables (and Datasets
  without these attributes) use the values as they are (``scale`` ``"linear"``).
* **Constant trajectories** (``|f(last) − f(first)| ≤ 1e-12 · max(1, max |f|)``) have ``p = 1`` at
  every step: the feature is where it ends from the start.  Then ``emergence``,
  ``stabilisation`` and ``peak_step`` are the first step, ``auc = 1`` and ``max_rate = 0``.
* **Infinite values** (PSNR of the final image against itself) are replaced by the largest
  (``+inf``) or smallest (``−inf``) finite value of that profile over all samples and steps
  before normalising: "as close as any step gets".
* **NaN** anywhere in a sample's trajectory makes all its measures NaN; summaries skip it.

Measures per sample (steps are values of the ``step`` coordinate)
-----------------------------------------------------------------
``emergence``
    First step with ``p ≥ 0.5`` (the half-life).
``stabilisation``
    First step from which ``|p − 1| ≤ tolerance`` holds at every later step.
``auc``
    Mean progress over normalised time, ``∫ p d(t/T)`` (trapezoid) with ``t/T`` from 0 at the
    first step to 1 at the last: near 1 for a feature that is there early, near 0 for a late one.
``max_rate``, ``peak_step``
    The largest increase of progress between consecutive steps per unit of normalised time,
    ``max (p(s) − p(s−1)) / (t_s − t_{s−1})``, and the step ``s`` where it arrives.

``emergence`` and ``stabilisation`` are also given as normalised time (``emergence_t``) and,
when the features carry the ``alpha_bar`` coordinate, as the log signal-to-noise ratio of that
step, ``log_snr = log(ᾱ / (1 − ᾱ))`` (``emergence_log_snr``), so that runs with different step
counts or schedulers can be compared (:func:`compare`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["MEASURES", "STATS", "compare", "emergence_order", "profile_names", "profiles", "progress"]

#: Per-sample measures of :func:`profiles` (``*_log_snr`` only with ``alpha_bar``).
MEASURES: tuple[str, ...] = (
    "emergence", "stabilisation", "auc", "max_rate", "peak_step",
    "emergence_t", "stabilisation_t", "emergence_log_snr", "stabilisation_log_snr",
)
#: The ``stat`` coordinate of the ``*_summary`` variables: median and mean over samples, each with
#: the bounds of its percentile-bootstrap confidence interval.
STATS: tuple[str, ...] = ("median", "median_low", "median_high", "mean", "mean_low", "mean_high")

#: Variables that describe the noise of x_t rather than a feature of x̂0: not profiles by default.
_NOT_FEATURES = ("band_snr_scheduler", "band_snr_measured")
_FLAT = 1e-12


# ---------------------------------------------------------------------------------------------
# Profiles of a features Dataset
# ---------------------------------------------------------------------------------------------


def _band_labels(var: xr.DataArray) -> list[str]:
    return [str(b) for b in var["band"].values] if "band" in var.coords else [str(i) for i in range(var.sizes["band"])]


def profile_names(features: xr.Dataset, *, include_snr: bool = False) -> list[str]:
    """The profiles a features Dataset holds, in its variable order.

    Parameters
    ----------
    features : xarray.Dataset
        Variables with dims ``(sample, step)`` or ``(sample, step, band)``; others are ignored.
    include_snr : bool
        Also list the per-band SNR of x_t (``band_snr_scheduler``, ``band_snr_measured``), which
        describe the noise schedule rather than a feature of x̂0.

    Returns
    -------
    list of str
        Variable names, and ``variable[band]`` for band variables.
    """
    if not isinstance(features, xr.Dataset):
        raise TypeError(f"features must be an xarray.Dataset, got {type(features).__name__}.")
    names = []
    for name, var in features.data_vars.items():
        if not include_snr and name in _NOT_FEATURES:
            continue
        dims = set(var.dims)
        if dims == {"sample", "step"}:
            names.append(str(name))
        elif dims == {"sample", "step", "band"}:
            names.extend(f"{name}[{band}]" for band in _band_labels(var))
    return names


def _is_unbounded_distance(var: xr.DataArray) -> bool:
    bounds = var.attrs.get("range")
    direction = str(var.attrs.get("direction", ""))
    return (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and bounds[0] == 0
            and (bounds[1] is None or bounds[1] == np.inf) and direction.startswith("lower"))


def _profile(features: xr.Dataset, name: str) -> tuple[np.ndarray, str]:
    """One profile as a float64 (sample, step) array on its normalisation scale, and the scale."""
    if name in features.data_vars and set(features[name].dims) == {"sample", "step"}:
        var = features[name]
        values = var.transpose("sample", "step").values
    else:
        variable, _, band = name.partition("[")
        var = features.data_vars.get(variable)
        if var is None or not band.endswith("]") or set(var.dims) != {"sample", "step", "band"}:
            raise KeyError(name)
        labels = _band_labels(var)
        band = band[:-1]
        if band not in labels:
            raise KeyError(name)
        values = var.isel(band=labels.index(band)).transpose("sample", "step").values
    values = np.asarray(values, dtype=np.float64)
    if _is_unbounded_distance(var):
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 / (1.0 + values), "1/(1+d)"  # d = inf → 0: no infinities left
    return values, "linear"


def _select(features: xr.Dataset, variables) -> list[str]:
    if variables is None:
        names = profile_names(features)
        if not names:
            raise ValueError("The features Dataset holds no (sample, step) or (sample, step, band) variable.")
        return names
    if isinstance(variables, str):
        variables = [variables]
    available = profile_names(features, include_snr=True)
    out = []
    for v in variables:
        var = features.data_vars.get(v)
        if var is not None and set(var.dims) == {"sample", "step", "band"}:
            out.extend(f"{v}[{b}]" for b in _band_labels(var))
        elif v in available:
            out.append(v)
        else:
            close = difflib.get_close_matches(str(v), available, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"No profile {v!r} in the features.{hint} Available: {', '.join(available) or 'none'}.")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Progress and per-sample measures
# ---------------------------------------------------------------------------------------------


def _replace_infinite(values: np.ndarray) -> np.ndarray:
    """Per profile (axis 0), ±inf → the largest / smallest finite value of that profile."""
    values = values.copy()
    for p in range(values.shape[0]):
        v = values[p]
        inf = np.isinf(v)
        if not inf.any():
            continue
        finite = v[np.isfinite(v)]
        if finite.size == 0:
            v[inf] = np.nan
        else:
            v[inf & (v > 0)] = finite.max()
            v[inf & (v < 0)] = finite.min()
    return values


def progress(values) -> np.ndarray:
    """Normalised progress of trajectories (see the module notes).

    Parameters
    ----------
    values : array_like, shape (..., step)
        Trajectories along the last axis; every leading index is one trajectory.  Infinite values
        should already be replaced (:func:`profiles` does it per profile).

    Returns
    -------
    ndarray of float64, shape (..., step)
        0 at the first step, 1 at the last; 1 everywhere for a constant trajectory; NaN everywhere
        for a trajectory holding NaN or infinite values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 1 or v.shape[-1] < 2:
        raise ValueError(f"progress needs trajectories of at least 2 steps along the last axis, got shape {v.shape}.")
    bad = ~np.isfinite(v).all(axis=-1, keepdims=True)
    v = np.where(bad, 0.0, v)
    first, last = v[..., :1], v[..., -1:]
    span = last - first
    flat = np.abs(span) <= _FLAT * np.maximum(1.0, np.abs(v).max(axis=-1, keepdims=True))
    p = (v - first) / np.where(flat, 1.0, span)
    p = np.where(flat, 1.0, p)
    return np.where(bad, np.nan, p)


def _measures(p: np.ndarray, steps: np.ndarray, t: np.ndarray, tolerance: float) -> dict[str, np.ndarray]:
    """Per-trajectory measures of progress p (..., T); NaN for NaN trajectories."""
    from scipy.integrate import trapezoid

    valid = np.isfinite(p).all(axis=-1)
    q = np.where(valid[..., None], p, 0.0)
    emergence_i = np.argmax(q >= 0.5, axis=-1)  # p(last) = 1: always found
    ok = np.abs(q - 1.0) <= tolerance
    stable_from = np.logical_and.accumulate(ok[..., ::-1], axis=-1)[..., ::-1]
    stabilisation_i = np.argmax(stable_from, axis=-1)  # the last step is always stable
    rate = np.diff(q, axis=-1) / np.diff(t)
    max_rate = rate.max(axis=-1)
    peak_i = np.argmax(rate, axis=-1) + 1
    constant = np.all(q == 1.0, axis=-1)
    peak_i = np.where(constant, 0, peak_i)
    max_rate = np.where(constant, 0.0, max_rate)
    auc = trapezoid(q, t, axis=-1)

    def masked(x):
        return np.where(valid, x, np.nan)

    return {
        "emergence": masked(steps[emergence_i]),
        "stabilisation": masked(steps[stabilisation_i]),
        "auc": masked(auc),
        "max_rate": masked(max_rate),
        "peak_step": masked(steps[peak_i]),
        "emergence_t": masked(t[emergence_i]),
        "stabilisation_t": masked(t[stabilisation_i]),
        "_emergence_i": emergence_i,
        "_stabilisation_i": stabilisation_i,
    }


def _summary(values: np.ndarray, *, n_boot: int, ci: float, rng: np.random.Generator) -> np.ndarray:
    """values (P, S) → (P, 6) per STATS: median and mean over samples with percentile-bootstrap CIs."""
    from scipy.stats import bootstrap

    out = np.full((values.shape[0], len(STATS)), np.nan)
    finite = np.isfinite(values)
    for k, func in enumerate((np.median, np.mean)):
        col = 3 * k
        for p in range(values.shape[0]):
            x = values[p, finite[p]]
            if x.size:
                out[p, col] = out[p, col + 1] = out[p, col + 2] = func(x)
        # one vectorised bootstrap for the rows without NaN, one call per other row
        whole = finite.all(axis=1) & (np.ptp(np.where(finite, values, 0.0), axis=1) > 0)
        groups = [np.flatnonzero(whole)] if whole.any() else []
        groups += [np.array([p]) for p in np.flatnonzero(~whole)
                   if finite[p].sum() >= 2 and np.ptp(values[p, finite[p]]) > 0]
        if n_boot < 1 or values.shape[1] < 2:
            continue
        for rows in groups:
            data = values[rows][:, finite[rows[0]]] if rows.size == 1 else values[rows]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy's notes on degenerate resamples
                res = bootstrap((data,), func, axis=-1, vectorized=True, n_resamples=int(n_boot),
                                confidence_level=ci, method="percentile", rng=rng)
            low, high = res.confidence_interval
            out[rows, col + 1] = np.minimum(low, out[rows, col])
            out[rows, col + 2] = np.maximum(high, out[rows, col])
    return out


def _log_snr(alpha_bar: np.ndarray) -> np.ndarray:
    a = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(a) - np.log1p(-a)


def profiles(features: xr.Dataset, *, variables=None, tolerance: float = 0.1, n_boot: int = 1000,
             ci: float = 0.95, seed: int = 0) -> xr.Dataset:
    """Emergence and stabilisation of every feature profile, per sample and summarised over samples.

    Parameters
    ----------
    features : xarray.Dataset
        Per-step features (:func:`denoisefeat.features`): variables with dims
        ``(sample, step)`` or ``(sample, step, band)``; a ``step`` coordinate (default
        ``0 … T−1``) and optionally ``alpha_bar`` and ``timestep`` along ``step``.
    variables : str or sequence of str, optional
        Variables (a band variable gives one profile per band) or ``variable[band]`` names;
        default every profile except the SNR of x_t (:func:`profile_names`).
    tolerance : float
        Stabilisation tolerance on progress: ``|p − 1| ≤ tolerance`` from then on.
    n_boot : int
        Bootstrap resamples for the confidence intervals (0: no intervals, the bounds equal the
        estimate).
    ci : float
        Confidence level of the intervals, in (0, 1).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    xarray.Dataset
        Dims ``profile``, ``sample``, ``step``, ``stat``:

        * ``progress`` (profile, sample, step): normalised progress ``p``;
        * per-sample measures (profile, sample), see :data:`MEASURES` and the module notes:
          ``emergence``, ``stabilisation``, ``peak_step`` (steps), ``auc``, ``max_rate``,
          ``emergence_t``, ``stabilisation_t`` (normalised time) and, with ``alpha_bar``,
          ``emergence_log_snr``, ``stabilisation_log_snr``;
        * ``<measure>_summary`` (profile, stat): median and mean over samples with bootstrap CIs
          (:data:`STATS`);
        * coordinates ``t`` (step): normalised time ``t/T``; ``alpha_bar``, ``log_snr`` and
          ``timestep`` (step) when the features have them; ``scale`` (profile): ``"linear"`` or
          ``"1/(1+d)"`` (see the module notes); ``n_valid`` (profile): samples without NaN.

    Raises
    ------
    KeyError
        Unknown variable names (the message lists the available profiles).
    ValueError
        Fewer than 2 steps, or a bad ``tolerance``, ``n_boot`` or ``ci``.
    """
    if not isinstance(features, xr.Dataset):
        raise TypeError(f"features must be an xarray.Dataset, got {type(features).__name__}.")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}.")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    names = _select(features, variables)
    n_steps = features.sizes.get("step", 0)
    if n_steps < 2:
        raise ValueError(f"Profiles need at least 2 steps, the features have {n_steps}.")
    steps = (np.asarray(features["step"].values) if "step" in features.coords else np.arange(n_steps))
    steps = steps.astype(np.float64)
    t = (steps - steps[0]) / (steps[-1] - steps[0])
    scaled = [_profile(features, n) for n in names]
    values = _replace_infinite(np.stack([v for v, _ in scaled]))  # (P, S, T)
    p = progress(values)
    m = _measures(p, steps, t, float(tolerance))
    coords = {"profile": names, "scale": ("profile", [sc for _, sc in scaled]),
              "step": features["step"].values if "step" in features.coords else np.arange(n_steps),
              "t": ("step", t, {"long_name": "normalised time t/T"}), "stat": list(STATS)}
    if "sample" in features.coords:
        coords["sample"] = features["sample"].values
    for name in ("timestep", "alpha_bar"):
        if name in features.coords and features[name].dims == ("step",):
            coords[name] = ("step", features[name].values)
    has_snr = "alpha_bar" in coords
    if has_snr:
        log_snr = _log_snr(coords["alpha_bar"][1])
        coords["log_snr"] = ("step", log_snr, {"long_name": "log(ᾱ / (1 − ᾱ))"})
        valid = np.isfinite(p).all(axis=-1)
        m["emergence_log_snr"] = np.where(valid, log_snr[m["_emergence_i"]], np.nan)
        m["stabilisation_log_snr"] = np.where(valid, log_snr[m["_stabilisation_i"]], np.nan)
    rng = np.random.default_rng(seed)
    data = {"progress": (("profile", "sample", "step"), p)}
    for measure in MEASURES:
        if measure not in m:
            continue
        data[measure] = (("profile", "sample"), m[measure])
        data[f"{measure}_summary"] = (("profile", "stat"), _summary(m[measure], n_boot=int(n_boot), ci=ci, rng=rng))
    coords["n_valid"] = ("profile", np.isfinite(p).all(axis=-1).sum(axis=-1))
    return xr.Dataset(data, coords=coords, attrs={
        "tolerance": float(tolerance), "n_boot": int(n_boot), "ci": float(ci), "seed": int(seed),
        "description": "Emergence (p ≥ 0.5) and stabilisation (|p − 1| ≤ tolerance thereafter) of normalised "
                       "progress p; see denoisefeat.temporal.",
    })


# ---------------------------------------------------------------------------------------------
# Ordering and comparing
# ---------------------------------------------------------------------------------------------


def _check_profiles(ds, what: str = "profiles") -> None:
    if not isinstance(ds, xr.Dataset) or "progress" not in ds or "stabilisation_summary" not in ds:
        raise TypeError(f"{what} must be the output of denoisefeat.temporal.profiles(features); "
                        f"got {type(ds).__name__} without 'progress'/'stabilisation_summary'.")


def emergence_order(profiles: xr.Dataset) -> list[str]:
    """Profile names sorted by median stabilisation step (then median emergence, then name order).

    Parameters
    ----------
    profiles : xarray.Dataset
        Output of :func:`profiles`.

    Returns
    -------
    list of str
        Earliest-settling first; profiles without a valid sample last.
    """
    _check_profiles(profiles)
    names = [str(p) for p in profiles["profile"].values]
    stab = profiles["stabilisation_summary"].sel(stat="median").values
    emer = profiles["emergence_summary"].sel(stat="median").values
    key = [(np.isnan(s), np.nan_to_num(s, nan=np.inf), np.nan_to_num(e, nan=np.inf), i)
           for i, (s, e) in enumerate(zip(stab, emer, strict=True))]
    return [names[k[-1]] for k in sorted(key)]


_AXES = {"progress": ("t", "t"), "log_snr": ("log_snr", "log_snr")}


def compare(datasets: Sequence[xr.Dataset], *, labels: Sequence[str], axis: str = "progress",
            n_points: int = 101) -> xr.Dataset:
    """Profiles of several runs on one axis: normalised time or log-SNR.

    Parameters
    ----------
    datasets : sequence of xarray.Dataset
        Outputs of :func:`profiles`, one per run (e.g. one scheduler or step count each).
    labels : sequence of str
        One unique label per run.
    axis : {"progress", "log_snr"}
        The common axis: ``"progress"`` is normalised time ``t/T`` in [0, 1]; ``"log_snr"`` is the
        log signal-to-noise ratio of each step (needs ``alpha_bar`` in every run; the grid spans the
        union of the runs' finite values, a run is NaN outside its own range).
    n_points : int
        Points of the common grid.

    Returns
    -------
    xarray.Dataset
        Dims ``run``, ``profile`` (the profiles every run has, in the first run's order), the axis
        (``t`` or ``log_snr``) and ``stat``:

        * ``progress`` (run, profile, axis): median progress over samples, linearly interpolated
          onto the grid;
        * ``emergence``, ``stabilisation`` (run, profile, stat): the summaries of
          ``emergence_t``/``stabilisation_t`` (or ``*_log_snr``) in axis units;
        * ``auc`` (run, profile, stat): the summary of ``auc`` (already on normalised time).

    Raises
    ------
    ValueError
        Unknown axis, mismatched labels, no common profile, or a run without ``alpha_bar`` for
        ``axis="log_snr"``.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {', '.join(_AXES)}, got {axis!r}.")
    datasets = list(datasets)
    labels = [str(label) for label in labels]
    if not datasets:
        raise ValueError("compare needs at least one profiles Dataset.")
    if len(labels) != len(datasets) or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be {len(datasets)} unique names, one per dataset; got {labels}.")
    for label, ds in zip(labels, datasets, strict=True):
        _check_profiles(ds, what=f"dataset {label!r}")
    coord, dim = _AXES[axis]
    for label, ds in zip(labels, datasets, strict=True):
        if coord not in ds.coords:
            raise ValueError(f"Run {label!r} has no {coord} coordinate (its features have no alpha_bar); "
                             "compare on axis='progress'.")
    common = [str(p) for p in datasets[0]["profile"].values]
    for ds in datasets[1:]:
        names = {str(p) for p in ds["profile"].values}
        common = [p for p in common if p in names]
    if not common:
        raise ValueError("The runs have no profile in common.")
    xs = [np.asarray(ds[coord].values, dtype=np.float64) for ds in datasets]
    if axis == "progress":
        grid = np.linspace(0.0, 1.0, int(n_points))
    else:
        finite = np.concatenate([x[np.isfinite(x)] for x in xs])
        if finite.size < 2:
            raise ValueError("The runs have fewer than 2 finite log-SNR values.")
        grid = np.linspace(finite.min(), finite.max(), int(n_points))
    curves, summaries = [], {"emergence": [], "stabilisation": [], "auc": []}
    suffix = "t" if axis == "progress" else "log_snr"
    for label, ds, x in zip(labels, datasets, xs, strict=True):
        sub = ds.sel(profile=common)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a profile without valid samples stays NaN
            median = np.nanmedian(sub["progress"].transpose("profile", "sample", "step").values, axis=1)
        keep = np.isfinite(x)
        if np.any(np.diff(x[keep]) < 0):
            raise ValueError(f"Run {label!r}: {coord} is not non-decreasing along the steps.")
        curves.append(np.stack([np.interp(grid, x[keep], row[keep], left=np.nan, right=np.nan) for row in median]))
        summaries["emergence"].append(sub[f"emergence_{suffix}_summary"].values)
        summaries["stabilisation"].append(sub[f"stabilisation_{suffix}_summary"].values)
        summaries["auc"].append(sub["auc_summary"].values)
    data = {"progress": (("run", "profile", dim), np.stack(curves))}
    data.update({k: (("run", "profile", "stat"), np.stack(v)) for k, v in summaries.items()})
    return xr.Dataset(data, coords={"run": labels, "profile": common, dim: grid, "stat": list(STATS)},
                      attrs={"axis": axis})
