"""Pixel-wise linear probes: where in the image does a layer's feature map encode a binary map?

At every pixel the channel vector of a spatial activation (upsampled bilinearly to the target map's
resolution) is fed to one logistic regression shared by all pixels, predicting an edge map or an
object mask.  Samples are split into folds (all pixels of a sample in the same fold); each fold's
maps are predicted by a probe trained on the others' pixels and scored by IoU and F1 of the
positive class, pooled over held-out samples, with cluster-bootstrap CIs over samples.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from denoisefeat.probes import _scores
from denoisefeat.probes.linear import check_acts, sample_folds

__all__ = ["fit_pixelwise"]


def _check_maps(target_maps, acts: xr.DataArray) -> np.ndarray:
    """Binary maps ``(sample, H, W)`` or ``(sample, step, H, W)`` as a bool array aligned with ``acts``."""
    n_samples, n_steps = acts.sizes["sample"], acts.sizes["step"]
    if isinstance(target_maps, xr.DataArray):
        if "sample" in target_maps.coords and "sample" in target_maps.dims:
            target_maps = target_maps.sel(sample=acts["sample"].values)
        if "step" in target_maps.dims:
            if "step" in target_maps.coords:
                target_maps = target_maps.sel(step=acts["step"].values)
            target_maps = target_maps.transpose("sample", "step", ...)
    maps = np.asarray(target_maps)
    if maps.ndim not in (3, 4) or maps.shape[0] != n_samples or (maps.ndim == 4 and maps.shape[1] != n_steps):
        raise ValueError(
            f"target_maps must be (sample, H, W) = ({n_samples}, H, W) or (sample, step, H, W) = "
            f"({n_samples}, {n_steps}, H, W); got shape {maps.shape}."
        )
    if maps.dtype != bool:
        if not np.all(np.isin(maps, (0, 1))):
            raise ValueError("target_maps must be binary (bool, or 0/1 values): threshold them first.")
        maps = maps.astype(bool)
    return maps


def _upsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(n, channel, h, w)`` → ``(n, channel, H, W)``, bilinear (anti-aliased when shrinking)."""
    from skimage.transform import resize

    if maps.shape[-2:] == tuple(shape):
        return maps
    shrink = maps.shape[-2] > shape[0] or maps.shape[-1] > shape[1]
    return resize(maps, (*maps.shape[:2], *shape), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)


def _pixel_rows(features: np.ndarray) -> np.ndarray:
    """``(n, channel, H, W)`` → ``(n·H·W, channel)``."""
    return np.moveaxis(features, 1, -1).reshape(-1, features.shape[1])


def _predict_maps(features, maps, folds, *, alpha, max_train_pixels, rng) -> np.ndarray:
    """Out-of-fold predicted maps ``(n, H, W)`` of a per-pixel logistic probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    predicted = np.zeros(maps.shape, dtype=bool)
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        X, y = _pixel_rows(features[train]), maps[train].ravel()
        if len(X) > max_train_pixels:
            chosen = rng.choice(len(X), size=max_train_pixels, replace=False)
            X, y = X[chosen], y[chosen]
        if y.all() or not y.any():
            predicted[test] = bool(y[0])
            continue
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0 / alpha, class_weight="balanced", max_iter=2000)
        )
        probe.fit(X, y)
        predicted[test] = probe.predict(_pixel_rows(features[test])).reshape(maps[test].shape)
    return predicted


def fit_pixelwise(
    acts,
    target_maps,
    *,
    cv: int = 5,
    groups=None,
    alpha: float = 1.0,
    max_train_pixels: int = 50_000,
    n_shuffles: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Fit and cross-validate a per-pixel linear probe of a binary map at every step.

    Parameters
    ----------
    acts : xarray.DataArray, dims (sample, [branch,] step, channel, y, x)
        Spatial activations, e.g. ``run.acts(layer, "full")`` or ``"random_projection(16)"``; the
        dim before ``y, x`` holds the per-pixel vector.  With a ``branch`` dim, one probe per branch.
    target_maps : array_like or xarray.DataArray, (sample, H, W) or (sample, step, H, W)
        Binary maps to predict (edge maps, object masks); one per sample, or one per sample and step.
    cv : int
        Folds over samples (or ``groups``).
    groups : array_like, optional
        One label per sample; samples with the same label stay in the same fold.
    alpha : float
        Inverse of the logistic regression's C.  Classes are balanced (edges are rare).
    max_train_pixels : int
        At most this many training pixels per fold, drawn at random (the probe is linear: a
        subsample of pixels estimates it well, and it keeps memory and time bounded).
    n_shuffles : int
        Control probes trained on the maps of other samples (maps permuted across samples): the IoU a
        probe reaches from the maps' typical layout alone.
    n_boot : int
        Bootstrap resamples of samples for the CIs (0: no CIs).
    ci : float
        Confidence level of the CIs.
    seed : int
        Seeds folds, pixel subsampling, shuffles and bootstrap.

    Returns
    -------
    xarray.Dataset
        Dims ``([branch,] step)``: ``iou``, ``iou_ci_low``, ``iou_ci_high``, ``f1``, ``f1_ci_low``,
        ``f1_ci_high`` (of the positive class, pooled over held-out samples), ``shuffled_iou`` (mean
        IoU of the shuffled-map probes, NaN without shuffles), ``n`` (samples).  Steps that were not
        recorded are NaN.  Attributes ``cv``, ``alpha``, ``positive_rate`` (fraction of positive
        pixels: the IoU of predicting every pixel positive).

    Raises
    ------
    ValueError
        Activations without ``(…, y, x)`` dims and one vector dim, maps that are not binary or not
        matching in samples or steps, too few samples for ``cv``.
    """
    acts = check_acts(acts)
    rest = [d for d in acts.dims if d not in ("sample", "branch", "step")]
    if len(rest) != 3 or rest[1:] != ["y", "x"]:
        raise ValueError(
            f"fit_pixelwise needs spatial activations (sample, [branch,] step, channel, y, x); got dims {acts.dims}. "
            "Record the layer with the 'full' (or 'random_projection(k)') reducer."
        )
    maps = _check_maps(target_maps, acts)
    n_samples = acts.sizes["sample"]
    groups = np.arange(n_samples) if groups is None else np.asarray(groups)
    if groups.shape != (n_samples,):
        raise ValueError(f"groups must have one label per sample ({n_samples},); got shape {groups.shape}.")
    if alpha <= 0 or max_train_pixels < 1 or n_shuffles < 0 or not 0 < ci < 1:
        raise ValueError("alpha must be > 0, max_train_pixels ≥ 1, n_shuffles ≥ 0 and 0 < ci < 1.")
    folds = sample_folds(groups, None, cv=cv, stratify=False, seed=seed)
    rng = np.random.default_rng(seed)
    permutations = [rng.permutation(n_samples) for _ in range(n_shuffles)]
    branches = list(acts["branch"].values) if "branch" in acts.dims else [None]
    shape = (len(branches), acts.sizes["step"])
    names = ("iou", "iou_ci_low", "iou_ci_high", "f1", "f1_ci_low", "f1_ci_high", "shuffled_iou")
    out = {name: np.full(shape, np.nan) for name in names}
    n_scored = np.zeros(shape, dtype=int)
    for b, branch in enumerate(branches):
        data = acts if branch is None else acts.sel(branch=branch)
        for s in range(acts.sizes["step"]):
            values = np.asarray(data.isel(step=s).values, dtype=float)  # (sample, channel, y, x)
            if np.all(np.isnan(values)):
                continue
            if not np.all(np.isfinite(values)):
                raise ValueError(f"acts has NaN or infinite values at step {s} of a recorded step.")
            truth = maps if maps.ndim == 3 else maps[:, s]
            features = _upsample(values, truth.shape[-2:])
            kw = {"alpha": alpha, "max_train_pixels": max_train_pixels, "rng": rng}
            sums = _scores.segmentation_sums(truth, _predict_maps(features, truth, folds, **kw))
            for metric in ("iou", "f1"):
                out[metric][b, s] = _scores.score(metric, sums)
                out[f"{metric}_ci_low"][b, s], out[f"{metric}_ci_high"][b, s] = _scores.bootstrap_ci(
                    metric, sums, n_boot=n_boot, ci=ci, seed=seed
                )
            if permutations:
                shuffled = []
                for perm in permutations:
                    predicted = _predict_maps(features, truth[perm], folds, **kw)
                    shuffled.append(_scores.score("iou", _scores.segmentation_sums(truth[perm], predicted)))
                out["shuffled_iou"][b, s] = float(np.mean(shuffled))
            n_scored[b, s] = n_samples
    dims = ("branch", "step")
    coords = {"branch": branches, "step": acts["step"].values}
    if "timestep" in acts.coords and acts["timestep"].dims == ("step",):
        coords["timestep"] = ("step", acts["timestep"].values)
    result = xr.Dataset({name: (dims, v) for name, v in out.items()}, coords=coords)
    result["n"] = (dims, n_scored)
    result.attrs = {"cv": int(cv), "alpha": float(alpha), "positive_rate": float(maps.mean()),
                    "layer": str(acts.attrs.get("layer", acts.name or ""))}
    return result.squeeze("branch", drop=True) if branches == [None] else result
