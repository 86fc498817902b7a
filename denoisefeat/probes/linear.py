"""Linear probes per step (or step window): does a layer's activation linearly encode a target?

One probe is fitted per step window (and per classifier-free-guidance branch when the activations
have one) and scored on held-out samples:

* a continuous target → ridge regression, scored by R² (``kind="ridge"``);
* a categorical target → multinomial logistic regression, scored by accuracy (``kind="logistic"``).

Cross-validation splits **samples**, never the steps of one sample: in a window of several steps
every row of a sample (one per step of the window) lands in the same fold, and samples sharing a ``groups`` label
(e.g. one seed family) stay together.  Standardisation and the choice of the regularisation strength
happen inside each training fold (a scikit-learn pipeline; the inner search is grouped by sample
too), so nothing of a test sample leaks into its own prediction.

Scores are pooled over the out-of-fold predictions of all samples; their CIs come from a cluster
bootstrap over samples (:mod:`denoisefeat.probes._scores`).  Beside each score the result reports
control probes: the same procedure with the target shuffled across samples, and optionally a probe
on control features (``control=``: x_t itself, :func:`~denoisefeat.probes.controls.xt_features`, or a
randomly initialised copy of the model, :func:`~denoisefeat.probes.controls.random_init_acts`).
``selectivity = score − control score`` (Hewitt & Liang, 2019).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from denoisefeat.probes import _scores
from denoisefeat.steps import step_windows

__all__ = ["DEFAULT_ALPHAS", "KINDS", "fit"]

KINDS = ("auto", "ridge", "logistic")
#: Ridge strengths searched inside each training fold (by efficient leave-one-out when there is one
#: row per sample).  Logistic probes use α = 1 (C = 1) unless ``alphas`` is given: a grid search over
#: C costs a cross-validation per candidate.
DEFAULT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
_LEAD = ("sample", "branch", "step")


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def check_acts(acts, *, name: str = "acts") -> xr.DataArray:
    """``acts`` as a DataArray ``(sample, [branch,] step, ...)``; a clear error otherwise."""
    if not isinstance(acts, xr.DataArray):
        raise TypeError(
            f"{name} must be an xarray.DataArray with dims (sample, [branch,] step, ...), e.g. run.acts(layer); "
            f"got {type(acts).__name__}."
        )
    missing = [d for d in ("sample", "step") if d not in acts.dims]
    if missing:
        raise ValueError(f"{name} needs dims 'sample' and 'step'; it has {acts.dims} (missing {missing}).")
    lead = [d for d in _LEAD if d in acts.dims]
    rest = [d for d in acts.dims if d not in _LEAD]
    acts = acts.transpose(*lead, *rest)
    for dim in ("sample", "step"):
        if dim not in acts.coords:
            acts = acts.assign_coords({dim: np.arange(acts.sizes[dim])})
    return acts


def check_target(target, acts: xr.DataArray) -> xr.DataArray:
    """The target as a DataArray ``(sample,)`` or ``(sample, step)`` aligned with ``acts``' samples."""
    samples = acts["sample"].values
    if isinstance(target, xr.DataArray):
        extra = [d for d in target.dims if d not in ("sample", "step")]
        if "sample" not in target.dims or extra:
            raise ValueError(
                f"target must have dims (sample,) or (sample, step); it has {target.dims}. "
                "Select one value per sample (e.g. feats['edge_density'].isel(step=-1))."
            )
        if "sample" in target.coords:
            absent = np.setdiff1d(samples, target["sample"].values)
            if absent.size:
                raise ValueError(f"target has no value for samples {absent.tolist()[:10]} of the activations.")
            target = target.sel(sample=samples)
        elif target.sizes["sample"] != len(samples):
            raise ValueError(f"target has {target.sizes['sample']} samples, the activations {len(samples)}.")
        else:
            target = target.assign_coords(sample=samples)
        if "step" in target.dims:
            if "step" in target.coords:
                absent = np.setdiff1d(acts["step"].values, target["step"].values)
                if absent.size:
                    raise ValueError(f"target has no value at steps {absent.tolist()[:10]} of the activations.")
                target = target.sel(step=acts["step"].values)
            elif target.sizes["step"] != acts.sizes["step"]:
                raise ValueError(f"target has {target.sizes['step']} steps, the activations {acts.sizes['step']}.")
            else:
                target = target.assign_coords(step=acts["step"].values)
            target = target.transpose("sample", "step")
        return target
    values = np.asarray(target)
    if values.ndim not in (1, 2) or values.shape[0] != len(samples):
        raise ValueError(
            f"target must be one value per sample ({len(samples)},) or per sample and step "
            f"({len(samples)}, {acts.sizes['step']}); got shape {values.shape}."
        )
    if values.ndim == 2 and values.shape[1] != acts.sizes["step"]:
        raise ValueError(f"target has {values.shape[1]} steps, the activations {acts.sizes['step']}.")
    dims = ("sample",) if values.ndim == 1 else ("sample", "step")
    coords = {"sample": samples} if values.ndim == 1 else {"sample": samples, "step": acts["step"].values}
    return xr.DataArray(values, dims=dims, coords=coords)


def resolve_kind(kind: str, values: np.ndarray) -> str:
    """``"auto"``: bool, integer, string or categorical values → ``"logistic"``, floats → ``"ridge"``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
    if kind != "auto":
        return kind
    return "ridge" if np.issubdtype(values.dtype, np.floating) else "logistic"


def sample_folds(groups, y_per_sample, *, cv: int, stratify: bool, seed: int) -> np.ndarray:
    """Fold index of every sample: K-fold over groups of samples (stratified for classes)."""
    from sklearn.model_selection import KFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    unique = np.unique(groups)
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an integer ≥ 2 (folds over samples); got {cv!r}.")
    if len(unique) < cv:
        raise ValueError(f"cv={cv} folds need at least {cv} samples (groups of samples); there are {len(unique)}.")
    folds = np.empty(len(groups), dtype=int)
    if stratify:
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(groups)), y_per_sample, groups)
        for k, (_, test) in enumerate(splits):
            folds[test] = k
        return folds
    for k, (_, test) in enumerate(KFold(n_splits=cv, shuffle=True, random_state=seed).split(unique)):
        folds[np.isin(groups, unique[test])] = k
    return folds


# ---------------------------------------------------------------------------------------------
# One probe, cross-validated
# ---------------------------------------------------------------------------------------------
def _estimator(kind: str, alphas: Sequence[float], rows_group: np.ndarray):
    """A standardise-then-fit pipeline whose α is chosen on the training rows, grouped like the outer CV."""
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = len(np.unique(rows_group))
    inner = min(3, n_groups)
    splits = list(GroupKFold(n_splits=inner).split(rows_group, groups=rows_group)) if inner >= 2 else None
    if kind == "ridge" and len(alphas) == 1:
        return make_pipeline(StandardScaler(), Ridge(alpha=float(alphas[0])))
    if kind == "ridge":
        # With one row per group, RidgeCV's efficient leave-one-out *is* grouped.
        cv = None if n_groups == len(rows_group) or splits is None else splits
        return make_pipeline(StandardScaler(), RidgeCV(alphas=tuple(alphas), cv=cv))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / alphas[0], max_iter=2000))
    if len(alphas) == 1 or splits is None:
        return model
    grid = {"logisticregression__C": [1.0 / a for a in alphas]}
    return GridSearchCV(model, grid, cv=splits, scoring="accuracy")


def oof_predict(X, y, rows_group, rows_fold, *, kind: str, alphas) -> np.ndarray:
    """Out-of-fold predictions of every row: each fold predicted by a probe fitted on the others.

    ``rows_group`` labels the rows that must stay together (a sample's steps, a group's samples),
    also in the inner search for α.
    """
    predictions = np.empty(len(y), dtype=float if kind == "ridge" else y.dtype)
    for k in np.unique(rows_fold):
        train, test = rows_fold != k, rows_fold == k
        if kind == "logistic" and len(np.unique(y[train])) < 2:
            predictions[test] = y[train][0]  # a one-class training fold can only predict that class
            continue
        estimator = _estimator(kind, alphas, rows_group[train])
        estimator.fit(X[train], y[train])
        predictions[test] = estimator.predict(X[test])
    return predictions


def _sums(kind, y, yhat, rows_group, n_groups):
    """Sufficient statistics of the score per group (per sample without ``groups``)."""
    if kind == "ridge":
        return _scores.regression_sums(y, yhat, rows_group, n_groups)
    return _scores.classification_sums(y, yhat, rows_group, n_groups)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def fit(
    acts,
    target,
    *,
    kind: str = "auto",
    control=None,
    windows=None,
    cv: int = 5,
    groups=None,
    alphas: Sequence[float] | float | None = None,
    n_shuffles: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Fit and cross-validate a linear probe per step window (and per branch).

    Parameters
    ----------
    acts : xarray.DataArray, dims (sample, [branch,] step, ...)
        Activations, e.g. ``run.acts("mid_block", "channel_mean")``; every dim after ``step`` is
        flattened into the probe's input vector.  Steps that were not recorded (all NaN) give NaN
        scores.  With a ``branch`` dim a probe is fitted for each branch.
    target : array_like or xarray.DataArray, dims (sample,) or (sample, step)
        What to decode: one value per sample (a class, a final-image metric) or one per sample and
        step.  A DataArray is matched to ``acts`` by its ``sample`` (and ``step``) coordinates.
    kind : {"auto", "ridge", "logistic"}
        ``"auto"``: floats → ridge (score R²); bool, integer, string → logistic (score accuracy).
    control : xarray.DataArray, optional
        Control features with the same samples and steps (no ``branch``), e.g.
        :func:`~denoisefeat.probes.controls.xt_features` or the activations of a randomly
        initialised model; the selectivity is measured against the probe on them.  Without it,
        against the shuffled-target probe.
    windows : None, int or sequence of (int, int)
        Step windows, one probe each (:func:`denoisefeat.steps.step_windows` over the activations'
        ``step`` coordinate): ``None`` one probe per step; a number of contiguous windows (for all
        steps of a run, the windows of the ablation scans and regressions); or ``(start, stop)``
        pairs of loop steps.  The rows of a window's recorded steps are pooled, one per
        (sample, step).
    cv : int
        Folds over samples (or over ``groups``).
    groups : array_like, optional
        One label per sample; samples with the same label are never split between training and test.
        Default: every sample its own group.
    alphas : float or sequence of float, optional
        Regularisation strengths searched inside each training fold, grouped by sample (ridge α;
        logistic C = 1/α).  Default: :data:`DEFAULT_ALPHAS` for ridge, 1 for logistic.
    n_shuffles : int
        Shuffled-target control probes (the target permuted across samples, the same permutations at
        every step).  With ``control=None`` at least 1 is needed; with at least ``1 / (1 − ci)``
        (20 for 95 %) the selectivity's CI and p come from the permutation distribution.
    n_boot : int
        Bootstrap resamples of samples (of groups, with ``groups``) for the CIs and the p-value
        (0: none; otherwise at least ``1 / (1 − ci)``).
    ci : float
        Confidence level of the CIs.
    seed : int
        Seeds the folds, the shuffles and the bootstrap.

    Returns
    -------
    xarray.Dataset
        Dims ``([branch,] step)``; ``step`` is a window's first step, coordinate ``step_stop`` its
        half-open end (and ``timestep`` the scheduler timestep of its first step, when known).

        ============================  ============================================================
        ``score``                     pooled out-of-fold R² (ridge) or accuracy (logistic)
        ``ci_low``, ``ci_high``       bootstrap CI of ``score``
        ``shuffled``                  mean score of the shuffled-target probes (NaN if none)
        ``control``                   score of the probe on ``control`` (only when given)
        ``selectivity``               ``score`` − (``control`` if given, else ``shuffled``)
        ``selectivity_ci_low/high``   CI of ``selectivity``: a paired bootstrap over samples,
                                      or, against ≥ ``1 / (1 − ci)`` shuffled-target probes, the
                                      interval of ``score − shuffled_j`` over the refitted
                                      shuffles (a permutation interval)
        ``p``                         two-sided p-value of ``selectivity`` from the same
                                      procedure as its CI (``p < 1 − ci`` exactly when the CI
                                      excludes 0): the bootstrap p, or the permutation p;
                                      NaN with ``n_boot=0`` (bootstrap)
        ``n``                         samples scored
        ============================  ============================================================

        Attributes: ``kind``, ``metric`` (``"r2"`` or ``"accuracy"``), ``chance`` (0 for R², the
        majority-class rate for accuracy), ``cv``, ``windows`` (the ``[start, stop]`` pairs),
        ``n_shuffles``, ``control``
        (``"shuffled"`` or the control's name), ``classes`` (logistic).

    Raises
    ------
    ValueError
        Bad dims or sizes, NaN in a recorded step or in the target, a single class, too few samples
        for ``cv``, or ``n_shuffles=0`` without ``control``.

    Notes
    -----
    R² is pooled over the held-out predictions of all folds (``1 − SSE/SST`` about the mean of all
    targets), so a probe that predicts nothing scores about 0 and can score below 0.

    References
    ----------
    .. [1] J. Hewitt and P. Liang, "Designing and interpreting probes with control tasks", EMNLP 2019.
    .. [2] G. Alain and Y. Bengio, "Understanding intermediate layers using linear classifier probes", 2016.
    """
    acts = check_acts(acts)
    target = check_target(target, acts)
    values = target.values
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise ValueError("target has NaN or infinite values; drop those samples from acts and target first.")
    kind = resolve_kind(kind, values)
    values, classes = _encoded_target(values, kind)
    if control is not None:
        control = _aligned_control(control, acts)
    alphas = _checked_options(kind, control=control, n_shuffles=n_shuffles, ci=ci, alphas=alphas)
    plan = _Plan.of(acts, values, kind=kind, alphas=alphas, groups=groups, cv=cv, n_shuffles=n_shuffles,
                    n_boot=n_boot, ci=ci, seed=seed)
    steps = np.asarray(acts["step"].values)
    spans = step_windows(len(steps) if windows is None else windows, steps)
    windows = [np.flatnonzero((steps >= start) & (steps < stop)) for start, stop in spans]  # positions
    empty = [span for span, positions in zip(spans, windows) if positions.size == 0]
    if empty:
        raise ValueError(f"Windows {empty} hold none of the activations' steps {steps.tolist()}.")
    branches = list(acts["branch"].values) if "branch" in acts.dims else [None]

    shape = (len(branches), len(windows))
    names = ["score", "ci_low", "ci_high", "shuffled", "selectivity", "selectivity_ci_low", "selectivity_ci_high", "p"]
    if control is not None:
        names.insert(4, "control")
    out = {name: np.full(shape, np.nan) for name in names}
    out["n"] = np.zeros(shape, dtype=int)
    for b, branch in enumerate(branches):
        data = acts if branch is None else acts.sel(branch=branch)
        for w, positions in enumerate(windows):
            for name, value in plan.window(data, control, positions, spans[w]).items():
                out[name][b, w] = value
    return _result(out, acts, plan, spans, windows, branches, control=control, classes=classes)


def _checked_options(kind: str, *, control, n_shuffles, ci, alphas) -> tuple[float, ...]:
    """Check the controls' and the CIs' options; return the α grid (the kind's default when none is given)."""
    if not isinstance(n_shuffles, (int, np.integer)) or n_shuffles < 0:
        raise ValueError(f"n_shuffles must be a non-negative integer; got {n_shuffles!r}.")
    if control is None and n_shuffles == 0:
        raise ValueError("With control=None the selectivity is measured against shuffled targets: n_shuffles ≥ 1.")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1); got {ci!r}.")
    if alphas is None:
        alphas = DEFAULT_ALPHAS if kind == "ridge" else (1.0,)
    alphas = tuple(float(a) for a in np.atleast_1d(alphas))
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be positive regularisation strengths; got {alphas}.")
    return alphas


@dataclass(frozen=True)
class _Plan:
    """What every probe of one :func:`fit` shares: the target, the folds, the shuffles, the statistics."""

    kind: str
    metric: str
    alphas: tuple[float, ...]
    cv: int
    values: np.ndarray  # the encoded target, (sample,) or (sample, step)
    folds: np.ndarray  # fold of each sample
    group_codes: np.ndarray  # group of each sample: the units of CV, bootstrap and paired test
    n_groups: int
    permutations: list  # of the samples, one per shuffled-target probe (the same at every step)
    n_shuffles: int
    least_shuffles: int  # enough refitted shuffles for a permutation interval and p
    n_boot: int
    ci: float
    seed: int

    @classmethod
    def of(cls, acts, values, *, kind, alphas, groups, cv, n_shuffles, n_boot, ci, seed) -> _Plan:
        from denoisefeat.analyses.inference import min_resamples

        n_samples = acts.sizes["sample"]
        groups = np.arange(n_samples) if groups is None else np.asarray(groups)
        if groups.shape != (n_samples,):
            raise ValueError(f"groups must have one label per sample ({n_samples},); got shape {groups.shape}.")
        group_codes = np.unique(groups, return_inverse=True)[1]
        per_sample = values if values.ndim == 1 else None
        folds = sample_folds(groups, per_sample, cv=cv, stratify=kind == "logistic" and per_sample is not None,
                             seed=seed)
        rng = np.random.default_rng(seed)
        permutations = [rng.permutation(n_samples) for _ in range(n_shuffles)]  # break the sample–target pairing
        return cls(kind=kind, metric="r2" if kind == "ridge" else "accuracy", alphas=alphas, cv=int(cv), values=values,
                   folds=folds, group_codes=group_codes, n_groups=int(group_codes.max()) + 1,
                   permutations=permutations, n_shuffles=int(n_shuffles), least_shuffles=min_resamples(1.0 - ci),
                   n_boot=n_boot, ci=ci, seed=seed)

    def _target(self, values, rows_sample, rows_step, positions) -> np.ndarray:
        return values[rows_sample] if values.ndim == 1 else values[rows_sample, positions[rows_step]]

    def _oof_sums(self, X, y, rows_group, fold) -> np.ndarray:
        yhat = oof_predict(X, y, rows_group, fold, kind=self.kind, alphas=self.alphas)
        return _sums(self.kind, y, yhat, rows_group, self.n_groups)

    def window(self, data, control, positions, span) -> dict[str, float]:
        """The scores of the probe on one window of one branch (empty where none of its steps was recorded)."""
        X, rows_sample, rows_step = _design(data.isel(step=positions))
        if X is None:
            return {}
        y = self._target(self.values, rows_sample, rows_step, positions)
        fold, rows_group = self.folds[rows_sample], self.group_codes[rows_sample]
        sums = self._oof_sums(X, y, rows_group, fold)
        shuffled_sums = []
        for perm in self.permutations:
            y_perm = self._target(self.values[perm], rows_sample, rows_step, positions)
            shuffled_sums.append(self._oof_sums(X, y_perm, rows_group, fold))
        out, controls = {}, shuffled_sums
        if control is not None:
            Xc, c_sample, c_step = _design(control.isel(step=positions), name="control")
            if Xc is None or not (np.array_equal(c_sample, rows_sample) and np.array_equal(c_step, rows_step)):
                start, stop = span
                raise ValueError(f"control is missing steps {start}–{stop - 1} that the activations have.")
            control_sums = self._oof_sums(Xc, y, rows_group, fold)
            controls = [control_sums]
            out["control"] = _scores.score(self.metric, control_sums)
        keep = sums[:, 0] > 0  # groups with rows in this window
        sums, controls = sums[keep], [c[keep] for c in controls]
        shuffled_sums = [s[keep] for s in shuffled_sums]
        out.update(self._statistics(sums, controls, shuffled_sums, control_score=out.get("control")))
        out["n"] = len(np.unique(rows_sample))
        return out

    def _statistics(self, sums, controls, shuffled_sums, *, control_score) -> dict[str, float]:
        """Score, its CI, the shuffled score and the selectivity (CI, p) from the per-group sums."""
        metric = self.metric
        value = _scores.score(metric, sums)
        out = {"score": value}
        out["ci_low"], out["ci_high"] = _scores.bootstrap_ci(metric, sums, n_boot=self.n_boot, ci=self.ci,
                                                             seed=self.seed)
        out["shuffled"] = np.mean([_scores.score(metric, s) for s in shuffled_sums]) if shuffled_sums else np.nan
        reference = control_score if control_score is not None else out["shuffled"]
        out["selectivity"] = value - reference
        if control_score is None and self.n_shuffles >= self.least_shuffles:  # refitted shuffles: a permutation test
            shuffled = np.array([_scores.score(metric, s) for s in shuffled_sums])
            selectivity = _scores.permutation_selectivity(value, shuffled, ci=self.ci)
        else:
            selectivity = _scores.bootstrap_selectivity(metric, sums, controls=controls, n_boot=self.n_boot,
                                                        ci=self.ci, seed=self.seed)
        out["selectivity_ci_low"], out["selectivity_ci_high"] = selectivity.ci_low, selectivity.ci_high
        out["p"] = selectivity.p
        return out


def _result(out, acts, plan: _Plan, spans, windows, branches, *, control, classes) -> xr.Dataset:
    """The probes' scores as the Dataset :func:`fit` returns."""
    starts = np.array([start for start, _ in spans])
    stops = np.array([stop for _, stop in spans])
    dims = ("branch", "step")
    coords = {"branch": branches, "step": starts, "step_stop": ("step", stops)}
    if "timestep" in acts.coords and acts["timestep"].dims == ("step",):
        coords["timestep"] = ("step", acts["timestep"].values[[positions[0] for positions in windows]])
    n_scored = out.pop("n")
    result = xr.Dataset({name: (dims, v) for name, v in out.items()}, coords=coords)
    result["n"] = (dims, n_scored)
    chance = 0.0
    if plan.kind == "logistic":
        chance = float(np.bincount(plan.values.ravel()).max() / plan.values.size)
    result.attrs = {
        "kind": plan.kind, "metric": plan.metric, "chance": chance, "cv": plan.cv,
        "windows": [[int(start), int(stop)] for start, stop in spans],
        "n_shuffles": plan.n_shuffles, "layer": str(acts.attrs.get("layer", acts.name or "")),
        "control": "shuffled" if control is None else str(control.name or "control"),
    }
    if plan.kind == "logistic":
        result.attrs["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
    return result.squeeze("branch", drop=True) if branches == [None] else result


def _encoded_target(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The target as the probe fits it: class codes (and the classes) for logistic, floats for ridge."""
    if kind == "logistic":
        classes, codes = np.unique(values.astype(str) if values.dtype.kind in "OUS" else values, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"A classification target needs at least 2 classes; it has only {classes.tolist()}.")
        return codes.reshape(values.shape), classes
    if values.dtype.kind not in "fiub":
        raise ValueError(f"A ridge probe needs a numeric target; got dtype {values.dtype}. Use kind='logistic'.")
    values = values.astype(float)
    if np.ptp(values) == 0:  # R² of a constant target is undefined: every score would be NaN
        raise ValueError(f"The target is constant ({values.flat[0]:g} for every sample): a ridge probe has "
                         "nothing to predict. Choose a target that varies across samples.")
    return values, None


def _aligned_control(control, acts: xr.DataArray) -> xr.DataArray:
    """Control features checked and selected at the activations' samples and steps."""
    control = check_acts(control, name="control")
    if "branch" in control.dims:
        raise ValueError("control must have no 'branch' dim; select one (control.sel(branch='cond')).")
    try:
        return control.sel(sample=acts["sample"].values, step=acts["step"].values)
    except KeyError as error:
        raise ValueError(f"control must have every sample and step of the activations: {error}") from None


def _design(window: xr.DataArray, *, name: str = "acts"):
    """Rows (sample, step) × flattened features of one window; recorded steps only.

    Returns ``(X, rows_sample, rows_step)`` or ``(None, None, None)`` when no step was recorded.
    """
    values = np.asarray(window.values, dtype=float)
    n_samples, n_steps = values.shape[:2]
    values = values.reshape(n_samples, n_steps, -1)
    recorded = ~np.all(np.isnan(values), axis=(0, 2))
    if not recorded.any():
        return None, None, None
    values = values[:, recorded]
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values).all(axis=2))
        raise ValueError(
            f"{name} has NaN or infinite values at (sample, step) positions {bad[:5].tolist()} of a recorded step; "
            "drop those samples first."
        )
    step_idx = np.flatnonzero(recorded)
    rows_sample = np.repeat(np.arange(n_samples), len(step_idx))
    rows_step = np.tile(step_idx, n_samples)
    return values.reshape(n_samples * len(step_idx), -1), rows_sample, rows_step
