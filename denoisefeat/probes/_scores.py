"""Probe scores from per-sample sufficient statistics, and their cluster bootstrap.

A probe's held-out predictions are summarised per sample (a sample may contribute several rows:
the steps of a window, the pixels of a map) by a few sums from which the pooled score follows.
Resampling samples with replacement and re-pooling their sums is the cluster bootstrap: rows of one
sample always travel together, so a CI never pretends that the steps or pixels of one sample are
independent draws.

============  ==========================  ===========================================
metric        per-sample sums             pooled score
============  ==========================  ===========================================
``r2``        n, Σy, Σy², Σ(y − ŷ)²        1 − SSE / SST  (SST about the pooled mean)
``accuracy``  n, #correct                 #correct / n
``iou``       TP, FP, FN                  TP / (TP + FP + FN)
``f1``        TP, FP, FN                  2TP / (2TP + FP + FN)
============  ==========================  ===========================================
"""

from __future__ import annotations

import numpy as np
from scipy import stats

METRICS = ("r2", "accuracy", "iou", "f1")
_WIDTH = {"r2": 4, "accuracy": 2, "iou": 3, "f1": 3}


def regression_sums(y, yhat, rows_sample, n_samples: int) -> np.ndarray:
    """``(n_samples, 4)``: n, Σy, Σy², Σ(y − ŷ)² per sample (``rows_sample``: each row's sample index)."""
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    columns = [np.ones_like(y), y, y**2, (y - yhat) ** 2]
    return np.stack([np.bincount(rows_sample, weights=c, minlength=n_samples) for c in columns], axis=1)


def classification_sums(y, yhat, rows_sample, n_samples: int) -> np.ndarray:
    """``(n_samples, 2)``: n, #correct per sample."""
    correct = (np.asarray(y) == np.asarray(yhat)).astype(float)
    columns = [np.ones_like(correct), correct]
    return np.stack([np.bincount(rows_sample, weights=c, minlength=n_samples) for c in columns], axis=1)


def segmentation_sums(truth, predicted) -> np.ndarray:
    """``(n_samples, 3)``: TP, FP, FN per sample of boolean maps ``(sample, ...)``."""
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    predicted = np.asarray(predicted, bool).reshape(len(predicted), -1)
    return np.stack(
        [(truth & predicted).sum(1), (~truth & predicted).sum(1), (truth & ~predicted).sum(1)], axis=1
    ).astype(float)


def _pooled(metric: str, columns) -> np.ndarray:
    """The score of sums given as ``columns`` (each ``(..., n_samples)``), pooled over the last axis."""
    totals = [c.sum(axis=-1) for c in columns]
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "r2":
            n, sy, syy, sse = totals
            sst = syy - sy**2 / n
            return np.where(sst > 1e-12 * np.maximum(syy, 1e-300), 1.0 - sse / sst, np.nan)
        if metric == "accuracy":
            n, correct = totals
            return correct / n
        tp, fp, fn = totals
        if metric == "iou":
            return tp / (tp + fp + fn)
        return 2 * tp / (2 * tp + fp + fn)


def score(metric: str, sums: np.ndarray) -> float:
    """Pooled score of ``sums`` ``(n_samples, k)``."""
    return float(_pooled(metric, list(np.asarray(sums, float).T)))


def bootstrap_ci(
    metric: str,
    sums: np.ndarray,
    *,
    controls: list[np.ndarray] = (),
    n_boot: int,
    ci: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile cluster-bootstrap CI of ``score(sums) − mean(score(c) for c in controls)``.

    Samples are resampled jointly for the probe and its controls (a paired bootstrap), so the CI of
    a selectivity accounts for their correlation.  Returns ``(nan, nan)`` when ``n_boot == 0`` or
    there are fewer than 2 samples.
    """
    sums = np.asarray(sums, float)
    if n_boot == 0 or len(sums) < 2:
        return float("nan"), float("nan")
    width = _WIDTH[metric]
    blocks = [sums, *(np.asarray(c, float) for c in controls)]
    data = tuple(col for block in blocks for col in block.T)

    def statistic(*columns, axis=-1):
        columns = [np.moveaxis(c, axis, -1) for c in columns]
        values = _pooled(metric, columns[:width])
        if len(blocks) > 1:
            rest = [_pooled(metric, columns[i : i + width]) for i in range(width, len(columns), width)]
            values = values - np.mean(rest, axis=0)
        return values

    result = stats.bootstrap(
        data, statistic, n_resamples=n_boot, paired=True, vectorized=True, confidence_level=ci,
        method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_selectivity(
    metric: str,
    sums: np.ndarray,
    *,
    controls: list[np.ndarray],
    n_boot: int,
    ci: float,
    seed: int,
):
    """Selectivity ``score(sums) − mean(score(c) for c in controls)``: its CI and p from one bootstrap.

    Samples (groups) are resampled jointly for the probe and its controls; the interval and the
    two-sided p-value come from the same resamples
    (:func:`denoisefeat.analyses.inference.bootstrap_inference`), so ``p < 1 − ci`` exactly when
    the interval excludes 0.  NaN fields when ``n_boot == 0`` or there are fewer than 2 samples.
    """
    from denoisefeat.analyses.inference import Inference, bootstrap_inference

    blocks = [np.asarray(sums, float), *(np.asarray(c, float) for c in controls)]
    if n_boot == 0 or len(blocks[0]) < 2:
        return Inference.undefined()

    def statistic(*arrays, axis=-1):  # each array (..., width, n): the sample axis last
        pooled = [_pooled(metric, [a[..., j, :] for j in range(a.shape[-2])]) for a in arrays]
        return pooled[0] - np.mean(pooled[1:], axis=0)

    return bootstrap_inference(statistic, *blocks, n_boot=n_boot, alpha=1.0 - ci, seed=seed)


def permutation_selectivity(value: float, shuffled: np.ndarray, *, ci: float):
    """Selectivity over shuffled-target probes: its interval and p from the permutation distribution.

    ``θ_j = value − shuffled_j`` over the ``S`` shuffled-target probes (each refitted: the
    distribution includes the fitting noise a bootstrap of fixed predictions misses); the estimate is
    ``value − mean(shuffled)``; the interval and the two-sided p-value are the order-statistic
    interval and p of :func:`denoisefeat.analyses.inference.bootstrap_inference` applied to the
    ``θ_j`` (``p = (2·min(#θ ≤ 0, #θ ≥ 0) + 1) / (S + 1)``, the two-sided permutation p), so
    ``p < 1 − ci`` exactly when the interval excludes 0.
    """
    from denoisefeat.analyses.inference import Inference, order_statistic_inference

    shuffled = np.asarray(shuffled, dtype=float)
    if not np.isfinite(value) or shuffled.size == 0:
        return Inference.undefined()
    return order_statistic_inference(value - float(shuffled.mean()), value - shuffled, alpha=1.0 - ci)

