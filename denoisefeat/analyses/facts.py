"""The field's four known facts on one model, each measured with its interval: what ``denoisefeat facts`` runs.

:func:`known_facts` runs one trace (x_t, x̂0 and the UNet's blocks recorded) for :func:`band_snr` and
:func:`step_similarity`, then :func:`skip_spectrum` (UNet denoisers only) and
:func:`perturbation_timing`, and returns a :class:`KnownFacts` whose :meth:`~KnownFacts.summary`
gives each fact's number, its interval and whether this model shows it.  Every fact is oriented so
that it holds when its interval lies above 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from denoisefeat.analyses.coarse_to_fine import band_snr
from denoisefeat.analyses.perturbation import perturbation_timing
from denoisefeat.analyses.similarity import step_similarity
from denoisefeat.analyses.skips import skip_spectrum
from denoisefeat.hooks import top_level_layers
from denoisefeat.models import denoiser_of
from denoisefeat.trajectory import trace

__all__ = ["FACTS", "KnownFacts", "known_facts"]

#: The facts, in report order: key → the claim as the literature states it.
FACTS: dict[str, str] = {
    "coarse_to_fine": "High-frequency bands of x_t rise above their noise (SNR = 1) later in sampling than low bands.",
    "skip_high_frequency": "Skip connections carry more high-frequency energy than the backbone (FreeU).",
    "deep_blocks_settle": "Deep, low-resolution blocks change less between adjacent late steps than high-resolution "
                          "blocks (DeepCache).",
    "late_changes_detail": "Late perturbations change high frequencies (texture, edges) relatively more than early "
                           "ones, which change layout.",
}


@dataclass
class KnownFacts:
    """The four analyses of one model (see :func:`known_facts`).

    Attributes
    ----------
    model : str
    run : denoisefeat.store.Run
        The trace behind ``band_snr`` and ``step_similarity``.
    band_snr, step_similarity : xarray.Dataset
    skip_spectrum : xarray.Dataset or None
        None for denoisers without a UNet decoder.
    perturbation_timing : pandas.DataFrame
        An attribution table.
    seconds : dict of str to float
        Wall time of each analysis.
    """

    model: str
    run: object
    band_snr: xr.Dataset
    skip_spectrum: xr.Dataset | None
    step_similarity: xr.Dataset
    perturbation_timing: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per fact of :data:`FACTS`: ``estimate``, ``ci_low``, ``ci_high``, ``p`` and ``holds``.

        Returns
        -------
        pandas.DataFrame
            ``holds`` is True when the interval lies above 0, False when it does not, and None when
            the fact cannot be measured on this model (NaN numbers: no UNet decoder, one block size).
        """
        numbers = {
            "coarse_to_fine": _stats(self.band_snr["summary"]),
            "skip_high_frequency": (_stats(self.skip_spectrum["summary"]) if self.skip_spectrum is not None
                                    else dict.fromkeys(("estimate", "ci_low", "ci_high", "p"), np.nan)),
            "deep_blocks_settle": _stats(self.step_similarity["summary"]),
            "late_changes_detail": {k: float(self.perturbation_timing.attrs["summary"][k])
                                    for k in ("estimate", "ci_low", "ci_high", "p")},
        }
        rows = []
        for key, claim in FACTS.items():
            values = numbers[key]
            holds = None if np.isnan(values["ci_low"]) else bool(values["ci_low"] > 0)
            rows.append({"fact": key, "claim": claim, **values, "holds": holds})
        return pd.DataFrame(rows)


def _stats(summary: xr.DataArray) -> dict[str, float]:
    return {str(stat): float(summary.sel(stat=stat)) for stat in ("estimate", "ci_low", "ci_high", "p")}


def _blocks(pipe) -> list[str]:
    """The denoiser's blocks (down, mid, up; transformer blocks), without the input and output layers."""
    return [name for name in top_level_layers(pipe) if "blocks." in name or name == "mid_block"]


def known_facts(
    pipe,
    *,
    at_steps: Sequence[int] | None = None,
    strength: float = 1.0,
    similarity_reducer: str = "full",
    n_boot: int = 1000,
    alpha: float = 0.05,
    store=None,
    overwrite: bool = False,
    model_id: str | None = None,
    **run,
) -> KnownFacts:
    """Measure the four known facts of :data:`FACTS` on one model.

    Parameters
    ----------
    pipe : diffusers pipeline
    at_steps, strength
        The perturbation grid and strength (:func:`~denoisefeat.analyses.perturbation_timing`).
    similarity_reducer : str
        How the blocks are recorded for :func:`~denoisefeat.analyses.step_similarity`: ``"full"``
        (exact; mind the size on large models) or ``"random_projection(k)"``.
    n_boot : int
        Bootstrap resamples of the bootstrap intervals.
    alpha : float
        Every interval is ``1 − alpha``.
    store : str or path, optional
        Where to write the trace (x_t, x̂0, images and the recorded blocks); default in memory.
    overwrite : bool
        Replace an existing ``store``.
    model_id : str, optional
        The model's name in the store and the summary.
    **run
        The run options of :func:`denoisefeat.trace` (:class:`denoisefeat.options.RunOptions`;
        default 20 steps): every analysis uses the same samples.

    Returns
    -------
    KnownFacts
    """
    run = {"steps": 20, **run}
    seconds: dict[str, float] = {}

    def timed(name, work):
        start = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - start
        return result

    blocks = _blocks(pipe)
    traced = timed("trace", lambda: trace(pipe, **run, store=store, overwrite=overwrite, model_id=model_id,
                                          record=dict.fromkeys(blocks, similarity_reducer)))
    snr = timed("band_snr", lambda: band_snr(traced, n_boot=n_boot, alpha=alpha))
    similarity = timed("step_similarity", lambda: step_similarity(traced, n_boot=n_boot, alpha=alpha))
    skips = None
    if hasattr(denoiser_of(pipe), "up_blocks"):
        skips = timed("skip_spectrum", lambda: skip_spectrum(pipe, **run, alpha=alpha))
    timing = timed("perturbation_timing", lambda: perturbation_timing(
        pipe, **run, at_steps=at_steps, strength=strength, alpha=alpha))
    return KnownFacts(model=str(traced.attrs.get("model_id")), run=traced, band_snr=snr, skip_spectrum=skips,
                      step_similarity=similarity, perturbation_timing=timing, seconds=seconds)
