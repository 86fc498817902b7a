"""Ablation scans and causal tracing: which layer, at which denoising steps, drives which image feature.

:func:`ablation_scan` runs the clean trajectory once, then one trajectory per (layer, step window,
method) with that layer's output ablated in that window, with the same seeds, and measures how each
feature of the final image changes (paired per sample).

:func:`causal_trace` runs a clean and a corrupted trajectory (another condition, or other noise),
then corrupted trajectories with the clean output of one layer restored in one step window, and
measures the fraction of the clean − corrupted feature difference each restoration recovers.

Both return an attribution table (:mod:`denoisefeat.analyses.table`).

Both are presets over the generic :class:`~denoisefeat.analyses.scan.EditScan` (an unedited run,
then one edited run per cell, with prefix caching; see :mod:`denoisefeat.analyses.scan`); the table's
``attrs["denoiser_calls"]`` and ``attrs["denoiser_calls_uncached"]`` count the calls.  They take the
run options of :func:`denoisefeat.trace` (:class:`denoisefeat.options.RunOptions`) as keyword
arguments, with 20 steps and 8 samples by default.

Features
--------
Names of :data:`denoisefeat.metrics.METRICS` whose reference is nothing or an image (metrics that
compare with a reference compare with the clean final image), groups of them
(:data:`FEATURE_GROUPS`), and ``band_error:<band>`` for the bands of
:data:`denoisefeat.frequency.DEFAULT_BANDS`: the relative squared error of that band of the final image
against the clean final image, ``Σ_c E_b(x_c − clean_c) / Σ_c E_b(clean_c)`` with ``E_b`` the band
energy (:func:`denoisefeat.frequency.band_energy`) and the sums over the RGB channels — the
:func:`~denoisefeat.frequency.band_relative_error` of the whole colour image.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from denoisefeat.analyses.inference import (
    Inference,
    bootstrap_inference,
    float_resolution,
    floor_changes,
    min_resamples,
    ratio_of_means,
    t_inference,
)
from denoisefeat.analyses.scan import EditScan, as_images
from denoisefeat.analyses.table import CellImages, benjamini_hochberg, specificity, validate, write_attribution
from denoisefeat.frequency import DEFAULT_BANDS, band_energy
from denoisefeat.hooks import Edit, resolve_layers
from denoisefeat.hooks.layers import probe_layers
from denoisefeat.metrics import FEATURE_GROUPS, METRICS, compute_metrics
from denoisefeat.models import denoiser_of
from denoisefeat.options import RunOptions
from denoisefeat.steps import step_windows
from denoisefeat.store import replacement
from denoisefeat.trajectory import trace

__all__ = [
    "ABLATION_METHODS",
    "CORRUPTIONS",
    "FEATURE_GROUPS",
    "ablation_scan",
    "causal_trace",
    "resolve_features",
]

#: Ablation methods of :func:`ablation_scan` (methods of :class:`denoisefeat.hooks.Edit` that need no
#: extra input): ``zero`` sets the output to 0, ``mean`` to its mean over the batch's samples,
#: ``resample`` to another sample's output; ``identity`` leaves it as it is — the null control: every
#: row of an identity scan must be exactly 0 with p = 1.
ABLATION_METHODS = ("zero", "mean", "resample", "identity")

#: Corruptions of :func:`causal_trace`.
CORRUPTIONS = ("condition", "noise")

_BAND_PREFIX = "band_error:"
_DEFAULT_FEATURES = ("edges", "texture", "shape", "color")


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def resolve_features(features) -> list[str]:
    """Expand feature groups into metric names.

    Parameters
    ----------
    features : str or sequence of str
        Group names of :data:`FEATURE_GROUPS`, metric names of :data:`denoisefeat.metrics.METRICS`
        whose reference is nothing or an image, ``"bands"`` (every band of
        :data:`~denoisefeat.frequency.DEFAULT_BANDS`) or ``"band_error:<band>"``.

    Returns
    -------
    list of str
        Metric and band-error names, without duplicates, in the order given.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the close matches and every valid name) or none.
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
        raise ValueError("No features given: name groups (edges, texture, shape, color), metrics or bands.")
    return out


def _layers(pipe, layers) -> list[str]:
    """Resolved layer names in execution order (a probe forward pass), never-run modules last."""
    names = resolve_layers(pipe, layers)
    order = probe_layers(denoiser_of(pipe), names, size=None)[1]
    return sorted(names, key=lambda name: order.get(name, len(order)))


def _scan_options(run: dict, *, caller: str) -> RunOptions:
    """A scan's run options: 20 steps, and 8 samples unless conditions or a number are given."""
    conditioned = any(run.get(name) is not None for name in ("samples", "class_labels", "prompts"))
    return RunOptions.of(run, caller=caller, defaults={"steps": 20, **({} if conditioned else {"samples": 8})})


def _methods(method) -> list[str]:
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise ValueError(f"No ablation method given; valid: {', '.join(ABLATION_METHODS)}.")
    for m in methods:
        if m not in ABLATION_METHODS:
            raise ValueError(f"Unknown ablation method {m!r}; valid: {', '.join(ABLATION_METHODS)}.")
    return list(dict.fromkeys(methods))


def _check_counts(n_samples: int, alpha: float, *, n_boot: int | None = None) -> None:
    if n_samples < 2:
        raise ValueError(f"Paired statistics need at least 2 samples, got {n_samples}.")
    least = min_resamples(alpha)  # also validates alpha
    if n_boot is not None and (not isinstance(n_boot, (int, np.integer)) or n_boot < least):
        raise ValueError(
            f"n_boot must be at least {least} bootstrap resamples for alpha={alpha} "
            f"(1000 or more for stable intervals), got {n_boot!r}."
        )


# ---------------------------------------------------------------------------------------------
# Features and statistics
# ---------------------------------------------------------------------------------------------
def _band_errors(images: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Relative squared error per band, energies summed over channels: (sample, band)."""
    diff = np.asarray(band_energy(images - clean), dtype=np.float64).sum(axis=-2)
    ref = np.asarray(band_energy(clean), dtype=np.float64).sum(axis=-2)
    tiny = np.finfo(np.float64).eps * ((images**2).sum(axis=(-3, -2, -1)) + (clean**2).sum(axis=(-3, -2, -1)))
    zero_d, zero_r = diff <= tiny[:, None], ref <= tiny[:, None]
    ratio = diff / np.where(zero_r, 1.0, ref)
    return np.where(zero_r, np.where(zero_d, 0.0, np.inf), ratio)


def _features(images: np.ndarray, clean: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each feature of ``images`` (sample, 3, H, W) in [0, 1], comparisons against ``clean``."""
    metric_names = [n for n in names if not n.startswith(_BAND_PREFIX)]
    out = dict(compute_metrics(images, clean, names=metric_names)) if metric_names else {}
    if len(metric_names) < len(names):
        errors = _band_errors(images, clean)
        for i, band in enumerate(DEFAULT_BANDS):
            out[f"{_BAND_PREFIX}{band}"] = errors[:, i]
    return {name: np.asarray(out[name], dtype=np.float64).reshape(-1) for name in names}


def _distance(images: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-sample L2 distance over channels and pixels, (sample,)."""
    return np.sqrt(((images - other) ** 2).sum(axis=(-3, -2, -1)))


def _unchanged(images: np.ndarray, other: np.ndarray, resolution: float) -> np.ndarray:
    """Samples whose images differ nowhere by more than the float resolution, (sample,) bool."""
    return np.abs(images - other).max(axis=(-3, -2, -1)) <= resolution


@dataclass(frozen=True)
class _Reference:
    """The final images every row of a scan is measured against, with their features' scales.

    ``scale[f]`` is the feature's between-sample scale: the RMS over samples of
    ``f(x_σ(i); ref x_i) − f(x_i; ref x_i)`` with ``σ`` the cyclic shift — how much the feature
    differs between two samples of the run (for a property of the image, √2 × its standard
    deviation; for a comparison with the clean image, its typical value for another sample).
    ``resolution[f]`` is the largest change of the feature when the images are perturbed by
    rounding-level noise (uniform in ± the image resolution, two draws): changes this small are zero.
    ``image_scale`` is the RMS L2 distance between two samples' images.
    """

    images: np.ndarray
    features: dict[str, np.ndarray]
    scale: dict[str, float]
    resolution: dict[str, float]
    image_scale: float
    image_resolution: float

    @classmethod
    def of(cls, images: np.ndarray, names: Sequence[str], *, image_resolution: float) -> _Reference:
        base = _features(images, images, names)
        other = np.roll(images, 1, axis=0)
        between = _features(other, images, names)
        scale = {f: float(np.sqrt(np.nanmean((between[f] - base[f]) ** 2))) for f in names}
        rng = np.random.default_rng(0)
        resolution = dict.fromkeys(names, 0.0)
        for _ in range(2):
            noisy = np.clip(images + rng.uniform(-image_resolution, image_resolution, images.shape), 0.0, 1.0)
            perturbed = _features(noisy, images, names)
            for f in names:
                change = np.abs(perturbed[f] - base[f])
                change = change[np.isfinite(change)]
                resolution[f] = max(resolution[f], float(change.max()) if change.size else 0.0)
        image_scale = float(np.sqrt(np.mean(_distance(other, images) ** 2)))
        return cls(images, base, scale, resolution, image_scale, image_resolution)

    def check_scales(self) -> None:
        """Refuse features that do not vary between the clean samples (standardised effect undefined)."""
        flat = [f for f in self.scale if not self.scale[f] > 2 * self.resolution[f]]
        if flat:
            raise ValueError(
                f"Features {flat} do not vary between the clean samples (between-sample scale within float "
                "resolution), so their standardised effect is undefined: use samples that differ (other seeds or "
                "conditions) or leave these features out."
            )
        if not self.image_scale > self.image_resolution:
            raise ValueError("All clean samples are the same image: use other seeds or conditions.")


def _finite(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The arrays at the samples where all of them are finite, and the number of those samples."""
    finite = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[finite] for a in arrays], int(finite.sum())


def _ablation_rows(edited: np.ndarray, ref: _Reference, names: Sequence[str], *, alpha: float):
    """One row per feature of one ablated sweep: (feature, statistics) pairs."""
    values = _features(edited, ref.images, names)
    unchanged = _unchanged(edited, ref.images, ref.image_resolution)
    disruption = float(np.mean(np.where(unchanged, 0.0, _distance(edited, ref.images)))) / ref.image_scale
    for name in names:
        change = floor_changes(values[name] - ref.features[name], resolution=ref.resolution[name], unchanged=unchanged)
        (change,), n = _finite(change)
        result = t_inference(change, alpha=alpha)
        scale = ref.scale[name]  # > 0 after check_scales(); 0/0 (nothing varies, nothing changed) is 0
        effect_std = result.estimate / scale if scale > 0 else (0.0 if result.estimate == 0 else np.nan)
        yield name, dict(effect=result.estimate, ci_low=result.ci_low, ci_high=result.ci_high, p=result.p, n=n,
                         effect_std=effect_std, disruption=disruption,
                         specificity=specificity(abs(effect_std), disruption))


def _tracing_rows(patched: np.ndarray, corrupted: np.ndarray, f_bad: dict, gap: dict, ref: _Reference,
                  names: Sequence[str], *, n_boot: int, alpha: float):
    """One row per feature of one patched sweep: (feature, statistics) pairs."""
    values = _features(patched, ref.images, names)
    unchanged = _unchanged(patched, corrupted, ref.image_resolution)
    moved = float(np.mean(np.where(unchanged, 0.0, _distance(patched, corrupted))))
    reference_move = float(np.mean(_distance(ref.images, corrupted)))
    disruption = moved / reference_move if reference_move > 0 else np.nan
    for name in names:
        restored = floor_changes(values[name] - f_bad[name], resolution=ref.resolution[name], unchanged=unchanged)
        if not np.any(gap[name][np.isfinite(gap[name])]):  # the corruption did not change this feature
            result, n = Inference.undefined(), int(np.isfinite(gap[name]).sum())
        else:
            (num, den), n = _finite(restored, gap[name])
            result = bootstrap_inference(ratio_of_means, num, den, n_boot=n_boot, alpha=alpha)
        yield name, dict(effect=result.estimate, ci_low=result.ci_low, ci_high=result.ci_high, p=result.p, n=n,
                         restored=float(np.nanmean(restored)), effect_std=result.estimate, disruption=disruption,
                         specificity=specificity(result.estimate, disruption))


def _finish(rows: list[dict], *, alpha: float, inference: str, image_resolution: float, **attrs) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("n"), "p_adj", benjamini_hochberg(frame["p"]))
    frame["n"] = frame["n"].astype(np.int64)
    frame.attrs.update(alpha=alpha, ci_level=1 - alpha, inference=inference, image_resolution=image_resolution,
                       **attrs)
    return validate(frame)


# ---------------------------------------------------------------------------------------------
# Ablation scan
# ---------------------------------------------------------------------------------------------
def ablation_scan(
    pipe,
    *,
    layers,
    windows,
    method: str | Sequence[str] = "zero",
    features=_DEFAULT_FEATURES,
    alpha: float = 0.05,
    cache: bool = True,
    lanes: int | None = None,
    keep_images: int = 0,
    store=None,
    overwrite: bool = False,
    progress: bool = False,
    **run,
) -> pd.DataFrame:
    """Ablate each layer in each step window and measure the change of final-image features.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        A pipeline :func:`denoisefeat.trace` runs.
    layers : str or sequence of str
        Module paths or globs (:func:`denoisefeat.hooks.resolve_layers`; unknown names raise
        :class:`~denoisefeat.hooks.UnknownLayerError` listing the closest).
    windows : int or sequence of (int, int)
        Step windows in which each layer is ablated, see :func:`denoisefeat.steps.step_windows`.
    method : str or sequence of str
        One or more of :data:`ABLATION_METHODS`.
    features : str or sequence of str
        See :func:`resolve_features`.  Metrics that compare with a reference compare with the clean
        final image.
    alpha : float
        CIs are ``1 − alpha`` t-intervals of the mean paired change, dual to the t-test that gives
        ``p`` (:func:`~denoisefeat.analyses.inference.t_inference`); a row is significant when
        ``p_adj < alpha``.
    cache : bool
        Start each ablated trajectory from the cached clean prefix (module notes); ``False`` runs
        every trajectory from step 0 (same results, more denoiser calls).
    lanes : int, optional
        The most ablated trajectories that share one denoiser batch (those starting at the same
        step; :class:`~denoisefeat.analyses.scan.EditScan`): the same table, fewer and larger
        denoiser calls.  Default: 1 on a CPU (there the gain is modest: 1.4× over prefix caching
        alone on the toy model, 2 samples, 2 threads), on CUDA as many as fit in half the free memory.
    keep_images : int
        Keep the final images of the first ``keep_images`` samples, clean and of every ablated
        run, in ``attrs["images"]`` (a :class:`~denoisefeat.analyses.table.CellImages`), which
        :func:`~denoisefeat.analyses.table.write_attribution` stores beside the table: the viewer
        and the report show them when a cell is clicked.  Host memory: ``(cells + 1) × keep_images
        × 3 × H × W × 4`` bytes.  0 (default) keeps none; at most the scan's samples.
    store : str or path, optional
        Write the clean trajectory there (every step, :func:`denoisefeat.trace`) and the table
        under ``attribution/ablation`` (:func:`~denoisefeat.analyses.table.write_attribution`).
    overwrite : bool
        Replace an existing ``store``.
    progress : bool
        Show progress bars over the denoiser calls.
    **run
        The run options of :func:`denoisefeat.trace` (:class:`denoisefeat.options.RunOptions`:
        ``samples``, ``class_labels``, ``prompts``, ``negative_prompt``, ``seed``, ``steps``,
        ``scheduler``, ``guidance_scale``, ``eta``, ``height``, ``width``, ``batch_size``); the clean
        and every ablated trajectory share them, seeds and batches included.  Defaults: 20 steps;
        8 samples unless conditions are given (at least 2 samples).

    Returns
    -------
    pandas.DataFrame
        An attribution table, one row per (feature, layer, window, method), layers in execution
        order (a probe forward pass).
        Per sample, the change ``d_i = F(ablated_i) − F(clean_i)`` (comparison metrics compare
        with the clean final image ``clean_i``), set to 0 where it is within the feature's float
        resolution or where the ablated image equals the clean one to the image resolution
        (:func:`~denoisefeat.analyses.inference.float_resolution` of the denoiser's dtype).
        ``effect`` is ``mean(d)``; ``ci_low``/``ci_high`` its ``1 − alpha`` t-interval and ``p``
        the paired t-test of the same standard error (1 when every change is 0);
        ``p_adj`` Benjamini-Hochberg over the whole table; ``n`` the samples.
        ``effect_std = effect / scale``, with ``scale`` the feature's between-sample scale in the
        clean run (RMS of its difference between two clean samples; 1 means "as much as replacing
        the image by another sample"); ``disruption`` the mean L2 change of the whole final image in
        the same units (RMS L2 distance between two clean samples); ``specificity =
        |effect_std| / disruption``: how much more the cell moves this feature than the image as a
        whole (0 when nothing changed).  Methods are named ``"ablation:<method>"``.  Extra columns:
        ``baseline`` (the clean feature's mean), ``scale``, ``resolution`` (the feature's float
        resolution).  ``attrs``: ``alpha``, ``ci_level``, ``inference``, ``image_resolution``,
        ``denoiser_calls`` and ``denoiser_calls_uncached``.

    Raises
    ------
    ValueError
        Besides bad arguments: a feature that does not vary between the clean samples (its
        standardised effect is undefined), raised after the clean sweep and before any ablation.

    See Also
    --------
    causal_trace : restore clean activations in a corrupted run instead.
    """
    methods = _methods(method)
    names = resolve_features(features)
    layer_names = _layers(pipe, layers)
    scan = EditScan(pipe, _scan_options(run, caller="ablation_scan"), cache=cache, progress=progress, lanes=lanes,
                    keep_images=keep_images)
    _check_counts(scan.n_samples, alpha)
    cells = [(layer, pair, m) for layer in layer_names for pair in step_windows(windows, scan.n_steps)
             for m in methods]
    edits = [Edit(layer=layer, method=m, steps=range(start, stop)) for layer, (start, stop), m in cells]
    resolution = float_resolution(denoiser_of(pipe).dtype)
    with replacement(store, overwrite=overwrite) as target:  # an old store stays until the table is written
        ref = _Reference.of(scan.run_base(edits, store=target, overwrite=overwrite), names,
                            image_resolution=resolution)
        ref.check_scales()  # before the edited runs: a flat feature is an error, not hours later
        rows = []
        for (layer, (start, stop), m), ablated in zip(cells, scan.run_edits(edits), strict=True):
            for name, stats in _ablation_rows(ablated, ref, names, alpha=alpha):
                rows.append(dict(feature=name, layer=layer, step_start=start, step_stop=stop,
                                 method=f"ablation:{m}", **stats, baseline=float(np.nanmean(ref.features[name])),
                                 scale=ref.scale[name], resolution=ref.resolution[name]))
        frame = _finish(rows, alpha=alpha, inference="t", image_resolution=resolution)
        frame.attrs.update(denoiser_calls=scan.calls,
                           denoiser_calls_uncached=scan.planned_calls(edits, cache=False, lanes=1))
        if keep_images:
            frame.attrs["images"] = CellImages(
                cells=[(layer, start, stop, f"ablation:{m}") for layer, (start, stop), m in cells],
                clean=scan.kept_base, edited=np.stack(scan.kept))
        if target is not None:
            write_attribution(target, frame, name="ablation", overwrite=overwrite)
    return frame


# ---------------------------------------------------------------------------------------------
# Causal tracing
# ---------------------------------------------------------------------------------------------
def _corrupted_conditions(pipe, request, corrupt, corrupt_class_labels, corrupt_prompts, corrupt_seed):
    """(prompts, class_labels, seeds) of the corrupted run."""
    n = request.n_samples
    if corrupt == "noise":
        if corrupt_class_labels is not None or corrupt_prompts is not None:
            raise ValueError("corrupt='noise' keeps the conditions; corrupt_class_labels/corrupt_prompts belong to "
                             "corrupt='condition'.")
        if corrupt_seed is None:
            first = max(request.seeds) + 1
            seeds = tuple(range(first, first + n))
        elif isinstance(corrupt_seed, (int, np.integer)):
            seeds = tuple(int(corrupt_seed) + i for i in range(n))
        else:
            seeds = tuple(int(s) for s in corrupt_seed)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} corrupt seeds for {n} samples.")
        same = [i for i in range(n) if seeds[i] == request.seeds[i]]
        if same:
            raise ValueError(f"corrupt='noise' needs other seeds than the clean run; samples {same} share theirs.")
        return request.prompts, request.class_labels, seeds
    if corrupt_seed is not None:
        raise ValueError("corrupt='condition' keeps the seeds; corrupt_seed belongs to corrupt='noise'.")
    if corrupt_class_labels is not None and corrupt_prompts is not None:
        raise ValueError("Give corrupt_class_labels or corrupt_prompts, not both.")
    prompts, labels = None, None
    if request.prompts is not None:
        if corrupt_class_labels is not None:
            raise ValueError(f"{type(pipe).__name__} is conditioned on prompts; give corrupt_prompts.")
        prompts = [""] if corrupt_prompts is None else list(corrupt_prompts)
        prompts = tuple(prompts * n if len(prompts) == 1 else prompts)
        changed = [a != b for a, b in zip(prompts, request.prompts)]
    elif request.class_labels is not None:
        if corrupt_prompts is not None:
            raise ValueError(f"{type(pipe).__name__} is conditioned on class labels; give corrupt_class_labels.")
        if corrupt_class_labels is None:
            null = getattr(getattr(pipe, "config", None), "null_class", None)
            if null is None:
                raise ValueError(f"{type(pipe).__name__} has no null class: give corrupt_class_labels=[...].")
            corrupt_class_labels = [null]
        labels = [int(c) for c in corrupt_class_labels]
        labels = tuple(labels * n if len(labels) == 1 else labels)
        changed = [a != b for a, b in zip(labels, request.class_labels)]
    else:
        raise ValueError(f"{type(pipe).__name__} is unconditional: corrupt='condition' needs a conditional model; "
                         "use corrupt='noise'.")
    conditions = prompts if prompts is not None else labels
    if len(conditions) != n:
        raise ValueError(f"{len(conditions)} corrupted conditions for {n} samples: give one per sample, or one.")
    if not any(changed):
        raise ValueError("The corrupted conditions equal the clean ones: nothing would be corrupted.")
    return prompts, labels, request.seeds


def causal_trace(
    pipe,
    *,
    layers,
    windows,
    corrupt: str = "condition",
    corrupt_class_labels: Sequence[int] | None = None,
    corrupt_prompts: Sequence[str] | None = None,
    corrupt_seed: int | Sequence[int] | None = None,
    features=_DEFAULT_FEATURES,
    n_boot: int = 1000,
    alpha: float = 0.05,
    cache: bool = True,
    lanes: int | None = None,
    keep_images: int = 0,
    store=None,
    overwrite: bool = False,
    progress: bool = False,
    **run,
) -> pd.DataFrame:
    """Restore clean activations of one layer in one step window of a corrupted run (activation patching).

    The clean run records the ``full`` output of every layer at the windows' steps; the corrupted
    run differs in its condition or its noise; each patched run is the corrupted run with one
    layer's output replaced by the clean one in one window (:class:`denoisefeat.hooks.Edit`
    ``method="patch"``).

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    layers : str or sequence of str
        Module paths or globs.
    windows : int or sequence of (int, int)
        See :func:`denoisefeat.steps.step_windows`.
    corrupt : {"condition", "noise"}
        ``"condition"``: same seeds, other conditions — ``corrupt_class_labels`` /
        ``corrupt_prompts``, by default the pipeline's null class (class-conditional models) or the
        empty prompt (text-to-image).  ``"noise"``: same conditions, other seeds — ``corrupt_seed``,
        by default seeds following the clean ones; the clean activations are patched into a
        trajectory of other noise (the patch source's seeds differ on purpose).
    corrupt_class_labels, corrupt_prompts : sequence, optional
        The corrupted conditions, one per sample or one for all.
    corrupt_seed : int or sequence of int, optional
        The corrupted run's seeds (``corrupt="noise"``).
    features, cache, lanes
        As for :func:`ablation_scan`; prefix caching shares the corrupted run's prefix.
    keep_images : int
        As for :func:`ablation_scan`: the clean, the corrupted and every patched run's final images
        of the first ``keep_images`` samples, in ``attrs["images"]``.
    n_boot : int
        Paired bootstrap resamples of the samples for each row's interval and p-value (one
        procedure, :func:`~denoisefeat.analyses.inference.bootstrap_inference`); at least
        ``1 / alpha``.  Bootstrap p-values are at least ``1 / (n_boot + 1)``: over a table of ``m``
        rows of which ``k`` are real, Benjamini–Hochberg needs ``n_boot ≳ m / (k·alpha)``.
    alpha : float
        Rows carry ``1 − alpha`` intervals; significant means ``p_adj < alpha``.
    store : str or path, optional
        Write the clean run (with its recorded activations) there and the table under
        ``attribution/causal_tracing``; default in memory (the ``full`` activations of every layer at
        every window step: mind the size on large models).
    overwrite : bool
        Replace an existing ``store``.
    progress : bool
        Show progress bars over the denoiser calls.
    **run
        The run options of the clean run, as for :func:`ablation_scan`; the corrupted run differs
        only in its conditions or its seeds.

    Returns
    -------
    pandas.DataFrame
        An attribution table with ``method == "causal_tracing"``.  For each feature ``F`` (metrics
        that compare with a reference compare with the clean final image), per sample
        ``gap = F(clean) − F(corrupted)`` and ``restored = F(patched) − F(corrupted)``; ``effect`` is
        the recovered fraction ``mean(restored) / mean(gap)`` (1: the layer and window restore the
        clean feature, 0: nothing), ``ci_low``/``ci_high`` its ``1 − alpha`` paired bootstrap
        interval of the ratio of means and ``p`` the bootstrap p-value of the same resamples.
        Changes within the feature's float resolution, or of images that did not change beyond the
        image resolution, are 0 (as in :func:`ablation_scan`).  ``effect_std`` equals ``effect`` (a
        fraction is scale-free); ``disruption`` is how far the patch moved the whole image,
        ``mean ‖patched − corrupted‖ / mean ‖clean − corrupted‖``; ``specificity = effect /
        disruption`` (above 1: the feature recovers more than the image as a whole).  Rows of a
        feature the corruption did not change (every gap 0) are NaN.  Extra columns: ``baseline``
        (mean clean feature), ``corrupted`` (mean corrupted feature), ``restored`` (mean restored
        change), ``corruption``.
        ``attrs["denoiser_calls"]`` / ``attrs["denoiser_calls_uncached"]`` count the corrupted and
        patched runs' denoiser calls.
    """
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corrupt!r}; valid: {', '.join(CORRUPTIONS)}.")
    names = resolve_features(features)
    layer_names = _layers(pipe, layers)
    options = _scan_options(run, caller="causal_trace")
    request, _ = options.request(pipe)
    _check_counts(request.n_samples, alpha, n_boot=n_boot)
    bad_prompts, bad_labels, bad_seeds = _corrupted_conditions(
        pipe, request, corrupt, corrupt_class_labels, corrupt_prompts, corrupt_seed)
    scan = EditScan(pipe, replace(options, prompts=bad_prompts, class_labels=bad_labels, seed=list(bad_seeds)),
                    cache=cache, progress=progress, lanes=lanes, keep_images=keep_images)
    cells = [(layer, pair) for layer in layer_names for pair in step_windows(windows, scan.n_steps)]
    with replacement(store, overwrite=overwrite) as target:  # an old store stays until the table is written
        frame = _causal_tracing_table(pipe, scan, layer_names, cells, names, options, store=target,
                                      overwrite=overwrite, corrupt=corrupt, n_boot=n_boot, alpha=alpha,
                                      keep_images=keep_images, progress=progress)
    return frame


def _causal_tracing_table(pipe, scan, layer_names, cells, names, options, *, store, overwrite, corrupt, n_boot,
                          alpha, keep_images, progress):
    """The causal-tracing scan of :func:`causal_trace` and its table (written to ``store`` when there is one)."""
    window_steps = sorted({s for _, (start, stop) in cells for s in range(start, stop)})
    clean_run = trace(pipe, record={layer: "full" for layer in layer_names}, record_steps=window_steps,
                      keep=("xt", "x0", "images") if store is not None else (), store=store, overwrite=overwrite,
                      progress=progress, **vars(options))
    clean = as_images(clean_run["final"].values)
    edits = [Edit(layer=layer, method="patch", steps=range(start, stop), source=clean_run)
             for layer, (start, stop) in cells]
    corrupted = scan.run_base(edits)
    resolution = float_resolution(denoiser_of(pipe).dtype)
    ref = _Reference.of(clean, names, image_resolution=resolution)
    f_bad = _features(corrupted, clean, names)
    same = _unchanged(clean, corrupted, resolution)
    gap = {name: floor_changes(ref.features[name] - f_bad[name], resolution=ref.resolution[name], unchanged=same)
           for name in names}
    rows = []
    for (layer, (start, stop)), patched in zip(cells, scan.run_edits(edits), strict=True):
        for name, stats in _tracing_rows(patched, corrupted, f_bad, gap, ref, names, n_boot=n_boot, alpha=alpha):
            rows.append(dict(feature=name, layer=layer, step_start=start, step_stop=stop, method="causal_tracing",
                             **stats, baseline=float(np.nanmean(ref.features[name])),
                             corrupted=float(np.nanmean(f_bad[name])), corruption=corrupt))
    frame = _finish(rows, alpha=alpha, inference="bootstrap", image_resolution=resolution, n_boot=n_boot)
    frame.attrs.update(denoiser_calls=scan.calls,
                       denoiser_calls_uncached=scan.planned_calls(edits, cache=False, lanes=1))
    if keep_images:
        frame.attrs["images"] = CellImages(
            cells=[(layer, start, stop, "causal_tracing") for layer, (start, stop) in cells],
            clean=clean[:keep_images].astype(np.float32), edited=np.stack(scan.kept), corrupted=scan.kept_base)
    if store is not None:
        write_attribution(store, frame, name="causal_tracing", overwrite=overwrite)
    return frame
