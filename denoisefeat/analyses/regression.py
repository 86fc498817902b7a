"""Regression of feature change on layer activity within step windows (statsmodels).

For each feature and step window, the rows are (sample, step) pairs of the window and the model is ::

    Δfeature[i, s] = β0 + β · z(activity[i, s]) + γ_s + ε[i, s]

with ``z`` the activity standardised over the window's rows (β: change of the feature per standard
deviation of the layer's activity), ``γ_s`` step fixed effects (the noise level changes with the step,
and with it both activity and change), and either

* ``model="ols"``: ordinary least squares with cluster-robust standard errors grouped by sample (the
  steps of one sample are not independent), or
* ``model="mixedlm"``: a linear mixed model with a random intercept per sample.

Layers are fitted one at a time, or together (``joint=True``: β of each layer holding the others
fixed).  p-values are adjusted with Benjamini–Hochberg over the whole grid.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from denoisefeat.analyses.correlation import aligned, as_activity, change_scale
from denoisefeat.analyses.table import COLUMNS, benjamini_hochberg, validate
from denoisefeat.steps import step_windows

__all__ = ["COV_TYPES", "MODELS", "regress"]

MODELS = ("ols", "mixedlm")
COV_TYPES = ("cluster", "HC1", "nonrobust")


def _design(x: np.ndarray, steps: np.ndarray, *, step_effects: bool) -> np.ndarray:
    """``[1, z(x_1) … z(x_k), step dummies]`` (the first step of the window is the reference)."""
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    columns = [np.ones((len(x), 1)), z]
    if step_effects:
        levels = np.unique(steps)
        columns.append((steps[:, None] == levels[None, 1:]).astype(float))
    return np.hstack(columns)


def _fit(y, X, groups, *, model: str, cov_type: str, n_effects: int, alpha: float):
    """(coefficient, CI low, CI high, p) of the activity columns 1…n_effects."""
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of MixedLM, small-cluster notes
        if model == "ols":
            kwargs = {"cov_type": cov_type}
            if cov_type == "cluster":
                kwargs["cov_kwds"] = {"groups": groups}
            result = sm.OLS(y, X).fit(**kwargs)
        else:
            result = sm.MixedLM(y, X, groups=groups).fit(reml=True)
    params = np.asarray(result.params)[1 : 1 + n_effects]
    interval = np.asarray(result.conf_int(alpha=alpha))[1 : 1 + n_effects]
    p = np.asarray(result.pvalues)[1 : 1 + n_effects]
    return params, interval[:, 0], interval[:, 1], p


def regress(
    activity,
    feature_change,
    *,
    model: str = "ols",
    windows=5,
    joint: bool = False,
    step_effects: bool = True,
    cov_type: str = "cluster",
    ci: float = 0.95,
) -> pd.DataFrame:
    """Regress per-step feature change on standardised layer activity, per step window.

    Parameters
    ----------
    activity : mapping of str to xarray.DataArray, xarray.Dataset or xarray.DataArray
        ``{layer: (sample, step)}`` activity statistics
        (:func:`denoisefeat.analyses.correlation.activity`), or a DataArray ``(sample, step, layer)``.
    feature_change : xarray.Dataset or xarray.DataArray, dims (sample, step)
        Per-step changes of one or more features
        (:func:`denoisefeat.analyses.correlation.feature_change`); matched by coordinates.
    model : {"ols", "mixedlm"}
        OLS (standard errors by ``cov_type``) or a mixed model with a random intercept per sample.
    windows : int or sequence of (int, int)
        Step windows: a number of contiguous windows splitting the activity's steps (the same
        windows as :func:`denoisefeat.analyses.ablation_scan` for all steps of a run), or explicit
        ``(start, stop)`` pairs.  ``mixedlm`` needs at least 2 steps with data per window.
    joint : bool
        Fit all layers in one model per (feature, window): each effect is a partial effect.
    step_effects : bool
        Include step fixed effects (dummies for the window's steps).
    cov_type : {"cluster", "HC1", "nonrobust"}
        OLS standard errors: clustered by sample (default), heteroskedasticity-robust, or classical.
        Ignored by ``mixedlm`` (model-based).
    ci : float
        Confidence level of the coefficient CIs.

    Returns
    -------
    pandas.DataFrame
        The attribution table: ``feature``, ``layer``, ``step_start``, ``step_stop``, ``method``
        (``"ols"`` or ``"mixedlm"``), ``effect`` (β: Δfeature per SD of activity), ``ci_low``,
        ``ci_high`` (Wald interval) and ``p`` (the Wald test of β = 0 with the same standard error:
        the interval excludes 0 exactly when ``p < 1 − ci``), ``p_adj`` (Benjamini–Hochberg over
        all rows), ``n`` (samples), ``effect_std`` (β in units of
        :func:`~denoisefeat.analyses.correlation.change_scale`, the SD of the feature's per-step change
        over every sample and step: one scale per feature, so windows where the feature hardly changes
        get small standardised effects); ``disruption`` and ``specificity`` are NaN (not an
        intervention).  Extra column ``n_obs``: the (sample, step) rows used.  A cell whose
        activity is constant, or with too few rows to fit (e.g. a window holding only the step
        that has no feature change), is NaN.

    Raises
    ------
    ValueError
        Unknown ``model`` or ``cov_type``, windows outside the steps, ``mixedlm`` with 1-step
        windows, inputs that do not share samples and steps.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}; got {model!r}.")
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type must be one of {', '.join(map(repr, COV_TYPES))}; got {cov_type!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci!r}.")
    # Windows split the activity's steps (all steps of the run, like ablation scans), before the
    # feature change drops its first or last step.
    spans = step_windows(windows, np.sort(as_activity(activity)["step"].values))
    acts, changes = aligned(activity, feature_change)
    steps = acts["step"].values
    for start, stop in spans:
        inside = (steps >= start) & (steps < stop)
        if model == "mixedlm" and inside.sum() == 1:
            raise ValueError(
                f"mixedlm needs ≥ 2 steps per window (window [{start}, {stop}) has 1): with one row per sample "
                "the sample effect cannot be told from noise. Use wider windows or model='ols'."
            )
    layers = list(acts.data_vars)
    samples = acts["sample"].values
    rows = []
    for feature in changes.data_vars:
        dy = changes[feature].values.astype(float)  # (sample, step)
        scale = change_scale(dy)
        for start, stop in spans:
            inside = (steps >= start) & (steps < stop)
            y_win = dy[:, inside]
            x_win = np.stack([acts[layer].values[:, inside].astype(float) for layer in layers], axis=-1)
            row_sample = np.repeat(samples, inside.sum())
            row_step = np.tile(steps[inside], len(samples))
            y_rows, x_rows = y_win.reshape(-1), x_win.reshape(-1, len(layers))
            groups_of_layers = [list(range(len(layers)))] if joint else [[k] for k in range(len(layers))]
            for chosen in groups_of_layers:
                x = x_rows[:, chosen]
                ok = np.isfinite(y_rows) & np.isfinite(x).all(axis=1)
                n_obs, n = int(ok.sum()), len(np.unique(row_sample[ok]))
                estimates = np.full((4, len(chosen)), np.nan)
                varies = n_obs > 0 and bool(np.all(x[ok].std(axis=0) > 0))  # else β is undefined: NaN
                X = _design(x[ok], row_step[ok], step_effects=step_effects) if varies else None
                if X is not None and n_obs > X.shape[1] and n >= 2:
                    if np.linalg.matrix_rank(X) == X.shape[1]:
                        try:
                            estimates = np.array(_fit(
                                y_rows[ok], X, row_sample[ok], model=model, cov_type=cov_type,
                                n_effects=len(chosen), alpha=1 - ci,
                            ))
                        except (np.linalg.LinAlgError, ValueError):
                            pass
                for k, layer_index in enumerate(chosen):
                    effect, low, high, p = estimates[:, k]
                    effect_std = float(effect) / scale
                    rows.append((str(feature), str(layers[layer_index]), int(start), int(stop), model,
                                 float(effect), float(low), float(high), float(p), np.nan, n, effect_std,
                                 np.nan, np.nan, n_obs))
    table = pd.DataFrame(rows, columns=[*COLUMNS, "n_obs"])
    table["p_adj"] = benjamini_hochberg(table["p"].to_numpy())
    table.attrs.update(alpha=1 - ci, ci_level=ci, inference="wald")
    return validate(table)
