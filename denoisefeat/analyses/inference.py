"""One inference procedure per attribution row, so that a row's CI and its p-value never disagree.

Each row of an attribution table takes its confidence interval **and** its p-value from one
procedure, dual to each other: the ``1 − alpha`` interval excludes 0 exactly when ``p < alpha``.
Since Benjamini–Hochberg never lowers a p-value, a row with ``p_adj < alpha`` always has an
interval that excludes 0 (tested as a property over random tables).

==========================  ===============================  ==================================
procedure                   used for                         interval and test
==========================  ===============================  ==================================
:func:`t_inference`         mean paired change (ablation)    t-interval and the one-sample t-test
:func:`fisher_z_inference`  correlations                     Fisher-z interval and the z-test
:func:`bootstrap_inference` ratios (causal tracing), probe   percentile interval and the
                            selectivities over a control     bootstrap p of the same resamples
permutations                probe selectivities over ≥ 20    the same order-statistic interval
                            shuffled-target probes           and p over the refitted shuffles
(statsmodels)               regression coefficients          Wald interval and the Wald test
==========================  ===============================  ==================================

The analytic procedures give continuous p-values, which matter for Benjamini–Hochberg over large
grids: a bootstrap p-value is at least ``1 / (B + 1)``, so over ``m`` rows of which ``k`` are real
effects it needs ``B ≳ m / (k·alpha)`` resamples to reach ``p_adj < alpha``.

Bootstrap (:func:`bootstrap_inference`): ``θ̂`` is the statistic of the data, ``θ*_1 … θ*_B`` its
values on ``B`` paired resamples (the same resampled samples for every array of the row);
``m₋ = #{θ* ≤ 0}``, ``m₊ = #{θ* ≥ 0}``; the two-sided p-value is
``p = min(1, (2·min(m₋, m₊) + 1) / (B + 1))`` — the smallest level at which a percentile interval
of the resamples excludes 0 (the ``+1`` keeps ``p > 0``, as for a permutation p-value; Davison &
Hinkley 1997, §4.2 and §5.2) — and the ``1 − α`` interval is ``[θ*_(k), θ*_(B−1−k)]`` (0-based
order statistics) with ``k = ⌈(α(B + 1) − 1) / 2⌉ − 1``, the largest count of resamples on the
wrong side of 0 that still gives ``p < α``.  Resamples whose statistic is undefined (NaN, e.g. a
ratio whose denominator resamples to 0) count on both sides of 0 and widen the interval to ±∞ on
their side: they can only make a row less significant.

:func:`float_resolution` and :func:`floor_changes` implement the numerical-resolution floor of the
scans: a change that float rounding alone could produce is zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Inference",
    "bootstrap_inference",
    "order_statistic_inference",
    "t_inference",
    "fisher_z_inference",
    "min_resamples",
    "ratio_of_means",
    "float_resolution",
    "floor_changes",
]


@dataclass(frozen=True)
class Inference:
    """The estimate of one row, its ``1 − alpha`` bootstrap interval and its two-sided p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    p: float

    @classmethod
    def undefined(cls) -> Inference:
        """A row that cannot be estimated (too few samples): every field NaN."""
        return cls(math.nan, math.nan, math.nan, math.nan)


def min_resamples(alpha: float) -> int:
    """The fewest bootstrap resamples with which a row can reach ``p < alpha`` (``(2·0 + 1)/(B + 1) < alpha``).

    Parameters
    ----------
    alpha : float
        The significance level, in (0, 1).

    Returns
    -------
    int
        The least number of bootstrap resamples.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    return math.floor(1.0 / alpha)


def _check(n_boot: int, alpha: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool):
        raise TypeError(f"n_boot must be an integer number of bootstrap resamples, got {n_boot!r}.")
    least = min_resamples(alpha)
    if n_boot < least:
        raise ValueError(
            f"n_boot={n_boot} bootstrap resamples cannot give p < alpha={alpha}: use at least {least} "
            "(1000 or more for stable intervals)."
        )


def bootstrap_inference(
    statistic: Callable[..., np.ndarray],
    *data: np.ndarray,
    n_boot: int,
    alpha: float = 0.05,
    seed: int = 0,
) -> Inference:
    """Paired percentile bootstrap of ``statistic``: its estimate, ``1 − alpha`` interval and p-value.

    Parameters
    ----------
    statistic : callable
        ``statistic(*arrays, axis=-1) -> ndarray``: the statistic of samples laid along ``axis``
        (vectorised: called once with arrays of shape ``(n_boot, n, ...)`` moved so that the
        sample axis is last, and once with the data itself).
    *data : ndarray, each of shape (n, ...)
        Paired samples: resample ``i`` of every array is the same sample.
    n_boot : int
        Bootstrap resamples; at least :func:`min_resamples` ``(alpha)``.
    alpha : float
        The interval is the ``1 − alpha`` percentile interval; ``p < alpha`` exactly when it
        excludes 0 (module notes).
    seed : int
        Seeds the resampling (the same seed gives the same resamples for every row).

    Returns
    -------
    Inference
        NaN fields when there are fewer than 2 samples.
    """
    _check(n_boot, alpha)
    arrays = [np.asarray(a, dtype=np.float64) for a in data]
    if not arrays:
        raise ValueError("bootstrap_inference needs at least one data array.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"Paired data must have one entry per sample; got lengths {[len(a) for a in arrays]}.")
    if n < 2:
        return Inference.undefined()
    estimate = float(statistic(*[np.moveaxis(a, 0, -1) for a in arrays], axis=-1))
    index = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    resampled = np.asarray(statistic(*[np.moveaxis(a[index], 1, -1) for a in arrays], axis=-1), dtype=np.float64)
    return order_statistic_inference(estimate, resampled, alpha=alpha)


def order_statistic_inference(estimate: float, draws: np.ndarray, *, alpha: float) -> Inference:
    """The interval and two-sided p-value of ``B`` resampled (or permuted) values of a statistic.

    Parameters
    ----------
    estimate : float
        The statistic of the data.
    draws : ndarray, shape (B,)
        Its resampled values; NaN counts on both sides of 0.  ``B`` at least
        :func:`min_resamples` ``(alpha)``.
    alpha : float

    Returns
    -------
    Inference
        ``p = min(1, (2·min(#draws ≤ 0, #draws ≥ 0) + 1) / (B + 1))`` and the order-statistic
        ``1 − alpha`` interval that excludes 0 exactly when ``p < alpha`` (module notes).
    """
    draws = np.asarray(draws, dtype=np.float64).reshape(-1)
    _check(draws.size, alpha)
    undefined = np.isnan(draws)  # counts on both sides of 0
    below = int(np.count_nonzero((draws <= 0) | undefined))
    above = int(np.count_nonzero((draws >= 0) | undefined))
    size = draws.size
    p = min(1.0, (2 * min(below, above) + 1) / (size + 1))
    k = math.ceil((alpha * (size + 1) - 1) / 2) - 1
    low = np.sort(np.where(undefined, -np.inf, draws))[k]
    high = np.sort(np.where(undefined, np.inf, draws))[size - 1 - k]
    return Inference(float(estimate) + 0.0, float(low) + 0.0, float(high) + 0.0, float(p))


def t_inference(x: np.ndarray, *, alpha: float = 0.05) -> Inference:
    """Mean of ``x`` with its t-interval and the one-sample t-test of mean 0 (same standard error).

    Parameters
    ----------
    x : ndarray, shape (n,)
        Paired changes, one per sample.
    alpha : float
        The interval is the ``1 − alpha`` t-interval; it excludes 0 exactly when ``p < alpha``.

    Returns
    -------
    Inference
        NaN fields with fewer than 2 values.  Changes that are all 0 give ``(0, 0, 0, p = 1)``;
        changes that are all equal and non-zero (no spread: a deterministic effect) give the point
        as the interval and ``p = 0``.
    """
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 2:
        return Inference.undefined()
    mean = float(x.mean()) + 0.0
    spread = float(x.std(ddof=1))
    if spread == 0.0:
        return Inference(mean, mean, mean, 1.0 if mean == 0.0 else 0.0)
    se = spread / np.sqrt(n)
    t = abs(mean) / se
    p = float(2 * stats.t.sf(t, n - 1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    return Inference(mean, mean - half, mean + half, min(1.0, p))


def fisher_z_inference(r: float, n: int, *, method: str = "pearson", alpha: float = 0.05) -> Inference:
    """A correlation with its Fisher-z interval and the z-test of no correlation (same standard error).

    ``z = atanh(r)`` has standard error ``1/√(n − 3)`` (Pearson) or ``√(1.06/(n − 3))``
    (Spearman; Fieller, Hartley & Pearson 1957); the interval is ``tanh(z ± z_{1−α/2}·se)`` and
    ``p = 2·(1 − Φ(|z|/se))``, so the interval excludes 0 exactly when ``p < alpha``.

    Parameters
    ----------
    r : float
        The correlation coefficient.
    n : int
        Samples (at least 4).
    method : {"pearson", "spearman"}
    alpha : float

    Returns
    -------
    Inference
        NaN fields when ``r`` is NaN or ``n < 4``.
    """
    from scipy import stats

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if n < 4 or not np.isfinite(r):
        return Inference.undefined()
    se = np.sqrt((1.0 if method == "pearson" else 1.06) / (n - 3))
    with np.errstate(divide="ignore"):
        z = float(np.arctanh(np.clip(r, -1.0, 1.0)))
    p = float(2 * stats.norm.sf(abs(z) / se))
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return Inference(float(r) + 0.0, float(np.tanh(z - half)) + 0.0, float(np.tanh(z + half)) + 0.0, p)


def ratio_of_means(numerator: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray:
    """``mean(numerator) / mean(denominator)`` along ``axis``; NaN where the denominator's mean is 0.

    Parameters
    ----------
    numerator, denominator : numpy.ndarray
        Paired values, one per sample along ``axis``.
    axis : int
        The sample axis.

    Returns
    -------
    numpy.ndarray
        The ratio, with ``axis`` reduced.
    """
    top, bottom = np.mean(numerator, axis=axis), np.mean(denominator, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), np.nan)


def float_resolution(dtype) -> float:
    """The smallest change of an image in [0, 1] that the scans count as real.

    The larger of 4 units in the last place of ``dtype`` (the denoiser's) at 1 and ``2⁻¹⁶``
    (1/256 of an 8-bit grey level): 1.5e-5 for float32, 3.9e-3 for float16, 3.1e-2 for bfloat16.
    Rounding differences of a few ulps are amplified along a trajectory (a 2⁻²² relative change of
    one block's output moves the toy-sized test pipeline's final images by ~1.7e-6 after three
    steps), so the floor sits well above the dtype's own resolution, yet below anything an image
    file can show.

    Parameters
    ----------
    dtype : torch.dtype or numpy dtype
        The denoiser's dtype.

    Returns
    -------
    float
        The resolution, in units of an image in [0, 1].
    """
    import torch

    eps = float(torch.finfo(dtype).eps) if isinstance(dtype, torch.dtype) else float(np.finfo(np.dtype(dtype)).eps)
    return max(4.0 * eps, 2.0**-16)


def floor_changes(changes: np.ndarray, *, resolution: float, unchanged: np.ndarray | None = None) -> np.ndarray:
    """Set to 0 the per-sample changes that float rounding alone could produce.

    Parameters
    ----------
    changes : ndarray, shape (n,)
        Per-sample changes of one feature.
    resolution : float
        The feature's float resolution: the largest change a rounding-level perturbation of the
        images produced (non-negative).
    unchanged : ndarray of bool, shape (n,), optional
        Samples whose images did not change beyond the image resolution: their change is 0 whatever
        the feature says (a discontinuous metric can jump on a rounding-level difference).

    Returns
    -------
    ndarray
        A copy with the floored entries exactly 0.
    """
    out = np.where(np.abs(changes) <= resolution, 0.0, np.asarray(changes, dtype=np.float64))
    if unchanged is not None:
        out = np.where(unchanged, 0.0, out)
    return out + 0.0
