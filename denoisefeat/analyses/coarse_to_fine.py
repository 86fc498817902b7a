"""Coarse-to-fine by per-band SNR: when each frequency band of x_t rises above its noise.

For ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε`` with white ``ε``, the signal-to-noise ratio of band
``b`` is ``SNR_b(t) = ᾱ_t·C_b / (1 − ᾱ_t)``, ``C_b`` the data's mean power per FFT bin in that band
(Dieleman 2024, "spectral autoregression"; Falck et al. 2025).  Natural images put most of their
power at low frequencies, so high bands drown first under the forward process and emerge last in
sampling.  :func:`band_snr` measures it on a run's stored x_t and compares it with the schedule.

Conventions
-----------
* Model space (latents for latent models).  x_t of every scheduler convention is brought to the
  variance-preserving form ``x_t / sqrt(a_t² + s_t²)`` (:func:`denoisefeat.schedulers.noise_level`),
  whose signal coefficient is ``sqrt(ᾱ_t)``.
* The signal part of x_t is ``sqrt(ᾱ_t)·x̂0`` with x̂0 the run's final sample (x̂0 of the last step);
  ``measured = Σ_c E_b(signal) / Σ_c E_b(x_t − signal)`` with ``E_b`` the
  :func:`~denoisefeat.frequency.band_energy` and the channels pooled (what
  :func:`denoisefeat.frequency.measured_band_snr` computes per channel);
  ``scheduler = ᾱ_t·C_b / (1 − ᾱ_t)`` (:func:`denoisefeat.frequency.scheduler_band_snr`), the mean
  over channels and samples.
* Over samples the measured SNR is pooled too, ``Σ_i E_b(signal_i) / Σ_i E_b(noise_i)``: a mean of
  per-sample ratios is biased upward by ``k / (k − 2)`` for a band holding ``k`` noise degrees of
  freedom (the mean of an inverse chi-square), 1.3 for the low band of one 32 px channel.
* The crossing step of a band is the first step at which its SNR reaches 1, interpolated linearly in
  ``log SNR`` between the two steps around it (0 when it is already ≥ 1 at step 0; ``inf`` when it
  never reaches 1 in the run).  Its interval is a percentile bootstrap over samples of the crossing
  of the mean SNR (:func:`denoisefeat.analyses.inference.bootstrap_inference`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from denoisefeat.analyses.inference import bootstrap_inference, ratio_of_means
from denoisefeat.frequency import DEFAULT_BANDS, band_energy, scheduler_band_snr
from denoisefeat.schedulers import loop_noise_levels

__all__ = ["STATS", "band_snr", "crossing_step"]

#: The ``stat`` coordinate of every summary: estimate, interval and two-sided p-value.
STATS = ("estimate", "ci_low", "ci_high", "p")


def crossing_step(snr: np.ndarray) -> np.ndarray:
    """The first (fractional) step at which ``snr`` reaches 1, along the last axis.

    Parameters
    ----------
    snr : ndarray, shape (..., step)
        A signal-to-noise ratio per step (sampling order: it grows as noise is removed).

    Returns
    -------
    ndarray, shape (...)
        ``i − 1 + (0 − log s_{i−1}) / (log s_i − log s_{i−1})`` for the first ``i`` with ``s_i ≥ 1``;
        0 when ``s_0 ≥ 1``; ``inf`` when no step reaches 1.
    """
    snr = np.asarray(snr, dtype=np.float64)
    above = snr >= 1.0
    first = np.argmax(above, axis=-1)
    crossed = above.any(axis=-1)
    prev = np.clip(first - 1, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.log(np.take_along_axis(snr, prev[..., None], axis=-1)[..., 0])
        hi = np.log(np.take_along_axis(snr, first[..., None], axis=-1)[..., 0])
        fraction = np.where(hi > lo, -lo / np.where(hi > lo, hi - lo, 1.0), 1.0)
    step = np.where(first == 0, 0.0, prev + np.clip(fraction, 0.0, 1.0))
    return np.where(crossed, step, np.inf)


def _crossing_of_ratio(signal: np.ndarray, noise: np.ndarray, axis: int = -1) -> np.ndarray:
    """Bootstrap statistic: the crossing step of the pooled SNR ``Σ signal / Σ noise`` over samples."""
    return crossing_step(ratio_of_means(signal, noise, axis=axis))


def _crossing_gap(signal_first, noise_first, signal_last, noise_last, axis: int = -1) -> np.ndarray:
    """Bootstrap statistic: how many steps after the first band the last band crosses SNR = 1."""
    return _crossing_of_ratio(signal_last, noise_last, axis=axis) - _crossing_of_ratio(signal_first, noise_first,
                                                                                       axis=axis)


def _model_space(run, name: str) -> np.ndarray:
    if name not in run.dataset:
        raise ValueError(f"band_snr needs the run's {name!r} array: trace it with keep including 'xt' and 'x0'.")
    return np.asarray(run[name].values, dtype=np.float64)


def band_snr(run, *, reference=None, bands=DEFAULT_BANDS, n_boot: int = 1000, alpha: float = 0.05,
             seed: int = 0) -> xr.Dataset:
    """Measured vs scheduler-implied SNR of each frequency band of x_t, per step, and when each crosses 1.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A traced run that stores ``xt`` and ``x0``.
    reference : array_like, shape (n, channel, h, w), optional
        Clean samples in model space to estimate ``C_b`` from (a reference data set); default the
        run's final samples.
    bands : mapping of str to (float, float)
        Ordered, contiguous bands (:data:`denoisefeat.frequency.DEFAULT_BANDS`).
    n_boot : int
        Bootstrap resamples of the samples for every interval.
    alpha : float
        Intervals are ``1 − alpha``.
    seed : int
        Seeds the resampling.

    Returns
    -------
    xarray.Dataset
        ``snr_measured`` (sample, step, band); ``snr_pooled`` (step, band), the measured SNR pooled
        over samples; ``snr_scheduler`` (step, band), the schedule's SNR with ``C_b`` the mean over
        the reference samples; ``crossing`` (source, band, stat): the crossing step of the pooled
        ``measured`` and of the ``scheduler`` SNR with its bootstrap interval
        (``stat`` = :data:`STATS`; ``p`` is NaN: a step has no null value); ``summary`` (stat): how
        many steps after the first band the last band's measured SNR crosses 1, with its paired
        bootstrap interval and p-value (coarse-to-fine when the interval lies above 0).  Coordinates
        ``timestep`` and ``alpha_bar`` along ``step``.

    Raises
    ------
    ValueError
        A run without ``xt``/``x0``, a reference of another shape than the run's samples, fewer than
        2 samples, or fewer than 2 bands.
    """
    names = list(bands)
    if len(names) < 2:
        raise ValueError(f"band_snr compares bands: give at least 2, got {names}.")
    xt, x0 = _model_space(run, "xt"), _model_space(run, "x0")
    final = x0[:, -1]  # (sample, channel, h, w): x̂0 of the last step
    source = final if reference is None else np.asarray(reference, dtype=np.float64)
    if source.ndim != 4 or source.shape[1:] != final.shape[1:]:
        raise ValueError(f"reference must be (n, channel, h, w) = (n, {', '.join(map(str, final.shape[1:]))}) in "
                         f"model space, got shape {source.shape}.")
    if len(source) < 2 or len(final) < 2:
        raise ValueError("band_snr's intervals resample samples: the run and the reference need at least 2.")
    attrs = run.attrs
    levels = loop_noise_levels(attrs["scheduler_class"], attrs["scheduler_config"], attrs["steps"],
                               timestep_options=attrs.get("timestep_options"))
    if len(levels) != xt.shape[1]:
        raise ValueError(f"The run's scheduler gives {len(levels)} steps, the store holds {xt.shape[1]}.")
    alpha_bar = np.array([level.alpha_bar for level in levels])
    norm = np.array([np.hypot(level.signal, level.noise) for level in levels])
    vp = xt / norm[None, :, None, None, None]  # x_t = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε
    signal = np.sqrt(alpha_bar)[None, :, None, None, None] * final[:, None]  # sqrt(ᾱ_t)·x̂0
    energy = {"signal": band_energy(signal, bands=bands).sum(-2),  # (sample, step, band), channels pooled
              "noise": band_energy(vp - signal, bands=bands).sum(-2)}
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = energy["signal"] / energy["noise"]
    implied = scheduler_band_snr(source, alphas_cumprod=alpha_bar, bands=bands).mean(axis=1)  # (n, step, band)
    crossing = np.full((2, len(names), len(STATS)), np.nan)
    ones = np.ones(len(source))
    for b in range(len(names)):
        pairs = ((energy["signal"][..., b], energy["noise"][..., b]),
                 (implied[..., b], np.broadcast_to(ones[:, None], implied.shape[:2])))
        for i, (top, bottom) in enumerate(pairs):
            result = bootstrap_inference(_crossing_of_ratio, top, bottom, n_boot=n_boot, alpha=alpha, seed=seed)
            crossing[i, b, :3] = result.estimate, result.ci_low, result.ci_high
    gap = bootstrap_inference(_crossing_gap, energy["signal"][..., 0], energy["noise"][..., 0],
                              energy["signal"][..., -1], energy["noise"][..., -1], n_boot=n_boot, alpha=alpha,
                              seed=seed)
    steps = np.arange(xt.shape[1])
    ds = run.dataset
    return xr.Dataset(
        {
            "snr_measured": (("sample", "step", "band"), measured),
            "snr_pooled": (("step", "band"), energy["signal"].sum(0) / energy["noise"].sum(0)),
            "snr_scheduler": (("step", "band"), implied.mean(axis=0)),
            "crossing": (("source", "band", "stat"), crossing),
            "summary": (("stat",), np.array([gap.estimate, gap.ci_low, gap.ci_high, gap.p])),
        },
        coords={"sample": ds["sample"].values, "step": steps, "band": names, "source": ["measured", "scheduler"],
                "stat": list(STATS), "timestep": ("step", ds["timestep"].values), "alpha_bar": ("step", alpha_bar)},
        attrs={"fact": "coarse_to_fine", "alpha": alpha, "n_boot": n_boot, "first_band": names[0],
               "last_band": names[-1], "reference": "run final samples" if reference is None else "given"},
    )
