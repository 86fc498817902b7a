"""Early vs late perturbations: noise injected into x_t at step k, and what it changes in the final image.

Perturbing early steps changes content and layout; perturbing late steps changes texture and edges
(Wang & Vastola 2023; the strength trade-off of SDEdit).  :func:`perturbation_timing` runs the clean
trajectory, then one trajectory per step ``k`` of a grid with ``x_k ← x_k + strength·s_k·z`` (``s_k``
the noise scale of x_k, :func:`denoisefeat.schedulers.noise_level`; ``z`` standard normal, one draw
per sample seed, the same draw at every ``k``), and measures how each feature of the final image
changes, paired per sample.  The perturbed runs go on from the clean run's loop state before ``k``
(:class:`denoisefeat.trajectory.PrefixCache`, :class:`~denoisefeat.trajectory.LoopState` with x_k
replaced): each costs ``T − k`` denoiser calls, and is exact for stochastic schedulers too.

The perturbation is relative to the noise the sample already holds: at every ``k`` it is a
``strength`` fraction of x_k's own noise, what the denoiser is trained to remove.

The result is an attribution table (:mod:`denoisefeat.analyses.table`) with one row per (feature,
k): ``layer = "x_t"`` (the sample, not a module), window ``[k, k + 1)``, method
``"perturbation:noise"``, so that :func:`~denoisefeat.analyses.table.rank` orders it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from denoisefeat.analyses.ablation import resolve_features
from denoisefeat.analyses.coarse_to_fine import STATS
from denoisefeat.analyses.inference import float_resolution, floor_changes, t_inference
from denoisefeat.analyses.table import benjamini_hochberg, specificity, validate
from denoisefeat.frequency import DEFAULT_BANDS, band_energy
from denoisefeat.metrics import compute_metrics
from denoisefeat.models import denoiser_of
from denoisefeat.options import RunOptions
from denoisefeat.schedulers import loop_noise_levels, set_timesteps
from denoisefeat.trajectory import DenoisingLoop, LoopState, PrefixCache

__all__ = ["METHOD", "SAMPLE", "NoiseKick", "perturbation_timing"]

#: The method name of every row.
METHOD = "perturbation:noise"
#: The ``layer`` of every row: the perturbed sample x_t.
SAMPLE = "x_t"
_BAND = "band_error:"
_DEFAULT_FEATURES = ("bands", "edges", "texture", "shape", "color")


@dataclass(frozen=True)
class NoiseKick:
    """``x ← x + strength·noise_scale·z`` for a batch of the run's samples (``z`` standard normal).

    Attributes
    ----------
    strength : float
        The perturbation's standard deviation as a fraction of ``noise_scale``.
    noise_scale : float
        ``s_k``, the noise scale of x_t at the perturbed step.
    seeds : tuple of int
        The run's sample seeds: ``z`` of sample ``i`` is drawn from a generator seeded by
        ``(noise_seed, seeds[i])``, the same at every step and in every batch.
    noise_seed : int
    """

    strength: float
    noise_scale: float
    seeds: tuple[int, ...]
    noise_seed: int = 0

    def __call__(self, samples: slice, x: torch.Tensor) -> torch.Tensor:
        draws = []
        for seed in self.seeds[samples]:
            state = int(np.random.SeedSequence([self.noise_seed, int(seed)]).generate_state(1)[0])
            draws.append(torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(state)))
        z = torch.stack(draws).to(device=x.device, dtype=x.dtype)
        return x + (self.strength * self.noise_scale) * z


def _initial_state(loop: DenoisingLoop, samples: slice) -> LoopState:
    """The loop state before step 0 (the initial noise), which a :class:`PrefixCache` does not keep."""
    request, family = loop.request, loop.family
    generators = [torch.Generator(device=family.device).manual_seed(s) for s in request.seeds[samples]]
    scheduler = copy.deepcopy(loop.template)
    set_timesteps(scheduler, request.steps, device=family.device, options=request.timestep_options)
    x = family.initial_sample(generators, scheduler)
    return LoopState(0, x, scheduler, [g.get_state() for g in generators])


def _features(images: np.ndarray, clean: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each feature per sample: metrics (against ``clean``) and band errors ``Σ_c E_b(x − clean) / Σ_c E_b(clean)``."""
    metrics = [name for name in names if not name.startswith(_BAND)]
    out = dict(compute_metrics(images, clean, names=metrics)) if metrics else {}
    if len(metrics) < len(names):
        changed = np.asarray(band_energy(images - clean), dtype=np.float64).sum(-2)  # (sample, band)
        base = np.asarray(band_energy(clean), dtype=np.float64).sum(-2)
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.where(base > 0, changed / np.where(base > 0, base, 1.0), np.where(changed > 0, np.inf, 0.0))
        out.update({f"{_BAND}{band}": error[:, i] for i, band in enumerate(DEFAULT_BANDS)})
    return {name: np.asarray(out[name], dtype=np.float64).reshape(-1) for name in names}


def _as_images(final: torch.Tensor) -> np.ndarray:
    return np.clip(final.detach().float().cpu().numpy().astype(np.float64), 0.0, 1.0)


def _grid(at_steps, n_steps: int) -> list[int]:
    if at_steps is None:
        return sorted({round(k) for k in np.linspace(0, n_steps - 1, min(5, n_steps))})
    grid = [at_steps] if isinstance(at_steps, (int, np.integer)) else list(at_steps)
    if not grid:
        raise ValueError("at_steps is empty: give the steps k at which to perturb x_t.")
    for k in grid:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"at_steps must hold integer loop steps, got {k!r}.")
        if not 0 <= k < n_steps:
            raise ValueError(f"Step k={k} is outside the run's steps 0…{n_steps - 1}: perturb a step of the loop.")
    if len(set(grid)) != len(grid):
        raise ValueError(f"Duplicate steps in at_steps={grid}.")
    return sorted(int(k) for k in grid)


def _timing_summary(errors: dict[int, dict[str, np.ndarray]], grid: list[int], alpha: float) -> dict:
    """Per sample, log(high/low band error) at the last k minus at the first k, with its t-interval."""
    low, high = f"{_BAND}{next(iter(DEFAULT_BANDS))}", f"{_BAND}{list(DEFAULT_BANDS)[-1]}"
    if len(grid) < 2 or low not in errors[grid[0]] or high not in errors[grid[0]]:
        return {**dict.fromkeys(STATS, float("nan")), "first_step": grid[0], "last_step": grid[-1]}
    with np.errstate(divide="ignore", invalid="ignore"):
        tilt = {k: np.log(errors[k][high] / errors[k][low]) for k in (grid[0], grid[-1])}
    difference = tilt[grid[-1]] - tilt[grid[0]]
    result = t_inference(difference[np.isfinite(difference)], alpha=alpha)
    return {"estimate": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high, "p": result.p,
            "first_step": grid[0], "last_step": grid[-1]}


def perturbation_timing(
    pipe,
    *,
    at_steps: int | Sequence[int] | None = None,
    strength: float = 1.0,
    features=_DEFAULT_FEATURES,
    noise_seed: int = 0,
    alpha: float = 0.05,
    **run,
) -> pd.DataFrame:
    """How much noise injected into x_t at step k changes each feature of the final image, for a grid of k.

    Parameters
    ----------
    pipe : diffusers pipeline
    at_steps : int or sequence of int, optional
        Loop steps ``k`` to perturb (each in ``0 … T−1``); default 5 evenly spaced steps.
    strength : float
        The perturbation's standard deviation as a fraction of x_k's noise scale ``s_k`` (> 0).
    features : str or sequence of str
        As for :func:`denoisefeat.analyses.ablation_scan` (:func:`~denoisefeat.analyses.resolve_features`):
        feature groups, metrics, ``"bands"`` or ``"band_error:<band>"``.  The default measures every
        band and every feature group.
    noise_seed : int
        Seeds the perturbations ``z`` (with each sample's seed).
    alpha : float
        Rows carry ``1 − alpha`` intervals.
    **run
        The run options of :func:`denoisefeat.trace` (:class:`denoisefeat.options.RunOptions`;
        default 20 steps); in memory, nothing stored.

    Returns
    -------
    pandas.DataFrame
        An attribution table, one row per (feature, k): per sample ``d = F(perturbed) − F(clean)``
        (metrics that compare with a reference compare with the clean final image; ``band_error:<b>``
        is the perturbed image's relative error in band ``b``, 0 for the clean one), 0 for samples whose
        image did not change beyond the float resolution
        (:func:`~denoisefeat.analyses.inference.float_resolution` of the denoiser's dtype); ``effect``
        is ``mean(d)`` with its t-interval and t-test; ``p_adj`` Benjamini–Hochberg over the table;
        ``effect_std = effect / scale`` with ``scale`` the feature's between-sample scale in the clean
        run (RMS of ``F(x_σ(i); x_i) − F(x_i; x_i)``, ``σ`` a cyclic shift of the samples);
        ``disruption`` the mean L2 change of the final image over the RMS L2 distance between two
        clean samples; ``specificity = |effect_std| / disruption`` (0 when the image did not change).
        Extra columns ``strength``,
        ``noise_scale`` (``s_k``), ``baseline`` (mean clean feature), ``scale``.  ``attrs["summary"]``:
        the known fact's number — per sample ``log(high / low band error)`` at the last ``k`` minus at
        the first, its mean with the t-interval and p (late perturbations tilt the change toward high
        frequencies when the interval lies above 0; NaN without the first and last bands).

    Raises
    ------
    ValueError
        A step ``k`` outside the run's steps, ``strength <= 0``, fewer than 2 samples, or bad run
        arguments (as for ``trace``).
    """
    if not np.isfinite(strength) or strength <= 0:
        raise ValueError(f"strength must be positive (a fraction of x_t's noise scale), got {strength!r}.")
    names = resolve_features(features)
    options = RunOptions.of(run, caller="perturbation_timing", defaults={"steps": 20})
    request, scheduler = options.request(pipe, decode=False)
    if request.n_samples < 2:
        raise ValueError(f"Paired statistics need at least 2 samples, got {request.n_samples}.")
    loop = DenoisingLoop(pipe, request, scheduler)
    levels = loop_noise_levels(request.scheduler_class, request.scheduler_config, request.steps,
                               timestep_options=request.timestep_options)
    grid = _grid(at_steps, loop.n_steps)
    chunks = loop.chunks(options.batch_size)
    prefixes = PrefixCache(grid)  # the clean run keeps its state before every k > 0
    starts = {c.start: _initial_state(loop, c) for c in chunks} if 0 in grid else {}
    clean = np.concatenate([_as_images(loop.run(c, prefixes=prefixes)) for c in chunks])
    base = _features(clean, clean, names)
    other = np.roll(clean, 1, axis=0)
    between = _features(other, clean, names)
    scale = {name: float(np.sqrt(np.nanmean((between[name] - base[name]) ** 2))) for name in names}
    image_scale = float(np.sqrt(np.mean(((other - clean) ** 2).sum(axis=(-3, -2, -1)))))
    resolution = float_resolution(denoiser_of(pipe).dtype)
    rows, errors = [], {}
    for k in grid:
        kick = NoiseKick(strength=float(strength), noise_scale=levels[k].noise, seeds=request.seeds,
                         noise_seed=noise_seed)
        perturbed = []
        for c in chunks:
            state = starts[c.start] if k == 0 else prefixes.state(c, k)
            perturbed.append(_as_images(loop.run(c, start=replace(state, x=kick(c, state.x)))))
        perturbed = np.concatenate(perturbed)
        values = errors[k] = _features(perturbed, clean, names)
        unchanged = np.abs(perturbed - clean).max(axis=(-3, -2, -1)) <= resolution
        distance = np.where(unchanged, 0.0, np.sqrt(((perturbed - clean) ** 2).sum(axis=(-3, -2, -1))))
        disruption = float(distance.mean()) / image_scale if image_scale > 0 else np.nan
        for name in names:
            change = floor_changes(values[name] - base[name], resolution=0.0, unchanged=unchanged)
            change = change[np.isfinite(change)]
            result = t_inference(change, alpha=alpha)
            effect_std = (result.estimate / scale[name] if scale[name] > 0
                          else (0.0 if result.estimate == 0 else np.nan))  # nothing varies, nothing changed: 0
            rows.append({"feature": name, "layer": SAMPLE, "step_start": k, "step_stop": k + 1, "method": METHOD,
                             "effect": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                             "p": result.p,
                             "n": len(change), "effect_std": effect_std, "disruption": disruption,
                             "specificity": specificity(abs(effect_std), disruption),
                             "strength": float(strength), "noise_scale": levels[k].noise,
                             "baseline": float(np.nanmean(base[name])), "scale": scale[name]})
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("n"), "p_adj", benjamini_hochberg(frame["p"]))
    frame["n"] = frame["n"].astype(np.int64)
    frame.attrs.update(alpha=alpha, ci_level=1 - alpha, inference="t", image_resolution=resolution,
                       denoiser_calls=loop.calls,
                       fact="late_changes_detail", summary=_timing_summary(errors, grid, alpha))
    return validate(frame)
