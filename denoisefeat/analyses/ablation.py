"""Ablation scans: which layer, at which denoising steps, drives which image feature.

:func:`ablation_scan` runs the clean trajectory once, then one intervened trajectory per
(layer, step window) with the same seeds, and measures how each feature of the final image
changes (paired per sample).  The result is an attribution table (see
:mod:`denoisefeat.analyses.table`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from denoisefeat.analyses.table import benjamini_hochberg, validate
from denoisefeat.frequency import DEFAULT_BANDS, band_relative_error
from denoisefeat.hooks import Edit, resolve_layers
from denoisefeat.metrics import METRICS, compute_metrics
from denoisefeat.trajectory import trace

__all__ = ["FEATURE_GROUPS", "ABLATION_METHODS", "ablation_scan", "resolve_features", "step_windows"]

#: Representative metrics of each feature group (names in :data:`denoisefeat.metrics.METRICS`).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "edges": ("edge_density", "edge_f1"),
    "texture": ("glcm_contrast", "lbp_distance"),
    "shape": ("mask_iou", "hu_moment_distance"),
    "color": ("delta_e2000", "colorfulness"),
}

#: Ablation methods of :func:`ablation_scan` (methods of :class:`denoisefeat.hooks.Edit` that need no extra input).
ABLATION_METHODS = ("zero", "mean", "resample")

_BAND_PREFIX = "band_error:"


def resolve_features(features) -> list[str]:
    """Expand feature groups into metric names.

    Parameters
    ----------
    features : str or sequence of str
        Group names of :data:`FEATURE_GROUPS`, metric names of :data:`denoisefeat.metrics.METRICS`
        (with no ground-truth reference), ``"bands"`` (all frequency bands) or ``"band_error:<band>"``.

    Returns
    -------
    list of str
        Metric and band-error names, without duplicates, in the order given.
    """
    if isinstance(features, str):
        features = [features]
    bands = [f"{_BAND_PREFIX}{band}" for band in DEFAULT_BANDS]
    valid = [name for name, spec in METRICS.items() if spec.needs_reference in (None, "image")]
    out: list[str] = []
    for feature in features:
        if feature in FEATURE_GROUPS:
            names = list(FEATURE_GROUPS[feature])
        elif feature == "bands":
            names = bands
        elif feature in valid or feature in bands:
            names = [feature]
        else:
            choices = [*FEATURE_GROUPS, "bands", *bands, *valid]
            close = difflib.get_close_matches(str(feature), choices, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"Unknown feature {feature!r}.{hint} Valid: {', '.join(choices)}.")
        out.extend(name for name in names if name not in out)
    if not out:
        raise ValueError("No features given.")
    return out


def step_windows(windows, steps: int) -> list[tuple[int, int]]:
    """Normalise ``windows`` into half-open ``(start, stop)`` step windows.

    Parameters
    ----------
    windows : int or sequence of (int, int)
        A number of equal windows splitting ``range(steps)``, or explicit pairs.
    steps : int
        Number of denoising steps.

    Returns
    -------
    list of (int, int)
    """
    if isinstance(windows, (int, np.integer)):
        if not 1 <= windows <= steps:
            raise ValueError(f"windows must be between 1 and steps={steps}, got {windows}.")
        return [(int(c[0]), int(c[-1]) + 1) for c in np.array_split(np.arange(steps), int(windows))]
    pairs = [tuple(int(v) for v in pair) for pair in windows]
    if not pairs:
        raise ValueError("windows is empty: give a number of windows or (start, stop) pairs.")
    for pair in pairs:
        if len(pair) != 2 or not 0 <= pair[0] < pair[1] <= steps:
            raise ValueError(f"Invalid window {pair}: need 0 <= start < stop <= steps={steps}.")
    return pairs


def _final(run) -> np.ndarray:
    return np.clip(np.asarray(run["final"], dtype=np.float64), 0.0, 1.0)


def _features(images: np.ndarray, clean: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    metric_names = [n for n in names if not n.startswith(_BAND_PREFIX)]
    out = dict(compute_metrics(images, clean, names=metric_names)) if metric_names else {}
    if any(n.startswith(_BAND_PREFIX) for n in names):
        errors = np.asarray(band_relative_error(images, clean))  # (sample, C, band)
        per_band = errors.reshape(errors.shape[0], -1, errors.shape[-1]).mean(axis=1)
        for i, band in enumerate(DEFAULT_BANDS):
            out[f"{_BAND_PREFIX}{band}"] = per_band[:, i]
    return {name: np.asarray(out[name], dtype=np.float64).reshape(-1) for name in names}


def _summary(diff: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float, float, float]:
    effect = float(diff.mean())
    if np.allclose(diff, diff[0]):  # no spread: the CI is the point, the test is undefined
        return effect, effect, effect, (1.0 if effect == 0 else np.nan)
    ci = stats.bootstrap((diff,), np.mean, n_resamples=n_boot, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    p = float(stats.ttest_1samp(diff, 0.0).pvalue)
    return effect, float(ci.low), float(ci.high), p


def ablation_scan(
    pipe,
    *,
    layers,
    windows,
    method: str | Sequence[str] = "zero",
    features=("edges", "texture", "shape", "color"),
    samples: int = 8,
    class_labels: Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float | None = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Ablate each layer in each step window and measure the change of final-image features.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    layers : str or sequence of str
        Module paths or globs (resolved with :func:`denoisefeat.hooks.resolve_layers`).
    windows : int or sequence of (int, int)
        See :func:`step_windows`.
    method : str or sequence of str
        One or more of :data:`ABLATION_METHODS`.
    features : str or sequence of str
        See :func:`resolve_features`.  Metrics that compare with a reference use the clean
        final image; ``band_error:<band>`` is the relative error of that band vs clean.
    samples, class_labels, prompts, seed, steps, guidance_scale, batch_size
        Passed to :func:`denoisefeat.trace`; the clean and every intervened run share seeds.
    n_boot : int
        Bootstrap resamples for the 95 % percentile CI of the mean paired change.
    progress : bool
        Show a progress bar per trajectory.

    Returns
    -------
    pandas.DataFrame
        An attribution table: ``effect`` is the mean over samples of (feature of the ablated
        final image − feature of the clean final image); ``p`` from a paired t-test
        (one-sample on the differences; NaN when all differences are equal and non-zero);
        ``p_adj`` BH-corrected over the whole grid.  Methods are named ``"ablation:<method>"``.
    """
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods:
        if m not in ABLATION_METHODS:
            raise ValueError(f"Unknown ablation method {m!r}; valid: {', '.join(ABLATION_METHODS)}.")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for confidence intervals, got {samples}.")
    names = resolve_features(features)
    layer_names = resolve_layers(pipe, layers)
    pairs = step_windows(windows, steps)
    common = dict(samples=samples, class_labels=class_labels, prompts=prompts, seed=seed, steps=steps,
                  guidance_scale=guidance_scale, batch_size=batch_size, progress=progress)
    clean = _final(trace(pipe, **common))
    base = _features(clean, clean, names)
    rows = []
    for layer in layer_names:
        for start, stop in pairs:
            for m in methods:
                edit = Edit(layer=layer, method=m, steps=range(start, stop))
                ablated = _final(trace(pipe, intervene=[edit], **common))
                values = _features(ablated, clean, names)
                for k, name in enumerate(names):
                    diff = values[name] - base[name]
                    effect, low, high, p = _summary(diff, n_boot=n_boot, seed=seed + k)
                    rows.append(dict(feature=name, layer=layer, step_start=start, step_stop=stop,
                                     method=f"ablation:{m}", effect=effect, ci_low=low, ci_high=high, p=p,
                                     n=int(diff.size), baseline=float(base[name].mean())))
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("n"), "p_adj", benjamini_hochberg(frame["p"]))
    return validate(frame)
