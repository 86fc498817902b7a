"""Which layers × steps — and which words' attention maps — separate the levels of a factor.

For a query (:class:`~denoisefeat.analyses.query.QuerySpec`) traced with recorded activations
(:func:`run_query`), :func:`contrast` asks, per factor, layer and step window: do the samples'
activations (averaged over the window's steps) differ between the factor's levels, the other
factors held fixed?

The statistic
-------------
Within each stratum ``s`` (the samples sharing every other factor's level), with ``x_i`` a sample's
activation vector, ``μ_s`` the stratum mean and ``μ_sl`` the mean of level ``l`` in it:

    η² = Σ_s Σ_l n_sl ‖μ_sl − μ_s‖² / Σ_s Σ_i ‖x_i − μ_s‖²,

the share of the activations' variance that the factor's levels explain — for two levels the
squared difference of means, ``n_a n_b / n · ‖μ_a − μ_b‖²``, over the total sum of squares; scale
free, in [0, 1].  Under no effect it is not 0 (level means of a finite sample differ), so the row's
``effect`` is the excess over chance, ``η² − mean(η²_π)`` over ``B`` permutations ``π`` of the
levels within each stratum, and its interval and two-sided p-value are the order statistics of
``η² − η²_π`` (:func:`~denoisefeat.analyses.inference.order_statistic_inference`, the probes'
permutation procedure); ``p_adj`` is Benjamini–Hochberg over the whole table.  Permuting within
strata is exact under the null that the factor does not matter; the seeds shared across conditions
make it conservative (the observed levels have the same seeds, a permutation mixes them).

The p-value is two-sided, like every table's: a significant *negative* effect says the levels agree
more than chance allows — at the first step, before the condition has acted, every condition's
sample of a seed is the same noise.  :func:`~denoisefeat.analyses.table.rank` counts such rows as
wrong-signed.

Activation vectors enter only through inner products, so wide ones are replaced by their
coordinates in the span of the samples (an SVD, exact) before permuting.  An activation that is
constant within every stratum (no variance: a module that ignores the factor and its inputs) gets
effect 0 and p = 1.

With ``source="attention"`` the vectors are the per-word attention maps (:mod:`denoisefeat.hooks.attention`)
of each word of the prompt template — the slot ``{color}`` as well as the fixed words — and the
table has a ``word`` column: which words' maps carry the factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from denoisefeat.analyses.inference import min_resamples, order_statistic_inference
from denoisefeat.analyses.query import QuerySpec, QuerySpecError
from denoisefeat.analyses.table import benjamini_hochberg, validate
from denoisefeat.steps import step_windows

__all__ = ["SOURCES", "contrast", "eta_squared", "run_query"]

#: What :func:`contrast` compares: recorded activations, or per-word attention maps.
SOURCES = ("activations", "attention")


def run_query(pipe, spec: QuerySpec, **trace_options):
    """Trace every condition of ``spec`` with its seeds, as one run.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    spec : QuerySpec
    **trace_options
        Passed to :func:`denoisefeat.trace` (``store``, ``steps``, ``record``, ``attention``, …);
        the conditioning (``samples``, ``seed``, ``prompts``/``class_labels``) comes from the spec.

    Returns
    -------
    denoisefeat.store.Run
    """
    from denoisefeat.trajectory import trace

    clash = set(trace_options) & {"samples", "seed", "prompts", "class_labels"}
    if clash:
        raise QuerySpecError(f"{sorted(clash)} come from the query spec; do not pass them.")
    return trace(pipe, **spec.run_options(), **trace_options)


def _span_coordinates(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` → ``(n, ≤ n)`` vectors with the same inner products (exact; cheaper to permute)."""
    if x.shape[1] <= x.shape[0]:
        return x
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u * s


def _between(x: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Σ_g ‖Σ_{i∈g} x_i‖² / n_g for labellings ``groups`` (B, n) of centred ``x`` (n, d)."""
    b, n = groups.shape
    onehot = np.zeros((b, n_groups, n))
    onehot[np.arange(b)[:, None], groups, np.arange(n)[None, :]] = 1.0
    counts = onehot.sum(axis=2)
    sums = onehot @ x  # (B, groups, d)
    return ((sums**2).sum(axis=2) / np.maximum(counts, 1)).sum(axis=1)


def eta_squared(x, levels, strata, *, n_permutations: int = 999, alpha: float = 0.05, seed: int = 0):
    """η² of ``levels`` within ``strata`` and its permutation inference (module notes).

    Parameters
    ----------
    x : array_like, shape (n, d)
        One activation vector per sample.
    levels : array_like, shape (n,)
        Each sample's level of the factor.
    strata : array_like of int, shape (n,)
        Each sample's stratum (the other factors' levels); strata with one level are left out.
    n_permutations : int
        Permutations of the levels within strata.
    alpha : float
        Level of the interval.
    seed : int
        Seed of the permutations.

    Returns
    -------
    tuple of (Inference, float, int)
        The excess of η² over its permutation mean with its interval and p, the observed η², and the
        number of samples that entered.
    """
    from denoisefeat.analyses.inference import Inference

    x = np.asarray(x, dtype=np.float64).reshape(len(levels), -1)
    _, levels = np.unique(np.asarray(levels), return_inverse=True)
    strata = np.asarray(strata)
    used = np.zeros(len(levels), dtype=bool)
    for s in np.unique(strata):
        in_s = strata == s
        used |= in_s & (len(np.unique(levels[in_s])) > 1)
    if not used.any():
        raise QuerySpecError("No stratum holds two levels of the factor: nothing to contrast.")
    x, levels, strata = x[used], levels[used], strata[used]
    n_levels = int(levels.max()) + 1
    _, stratum = np.unique(strata, return_inverse=True)
    centred = x.copy()
    for s in range(stratum.max() + 1):
        centred[stratum == s] -= centred[stratum == s].mean(axis=0)
    total = float((centred**2).sum())
    scale = float(np.abs(x).max()) if x.size else 0.0
    if total <= x.size * (np.finfo(np.float32).eps * scale) ** 2:
        return Inference(0.0, 0.0, 0.0, 1.0), 0.0, int(used.sum())  # constant within strata: no variance at all
    centred = _span_coordinates(centred)
    rng = np.random.default_rng(seed)
    permuted = np.empty((n_permutations, len(levels)), dtype=np.int64)
    permuted[:] = levels
    for s in range(stratum.max() + 1):
        members = np.flatnonzero(stratum == s)
        permuted[:, members] = rng.permuted(np.broadcast_to(levels[members], (n_permutations, members.size)), axis=1)
    groups = stratum * n_levels + levels
    observed = float(_between(centred, groups[None], (stratum.max() + 1) * n_levels)[0]) / total
    null = _between(centred, stratum[None] * n_levels + permuted, (stratum.max() + 1) * n_levels) / total
    draws = observed - null
    return order_statistic_inference(float(draws.mean()), draws, alpha=alpha), observed, int(used.sum())


def _window_vectors(values: np.ndarray, steps: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """``(sample, step, ...)`` → ``(sample, d)``: the mean over the window's recorded steps."""
    inside = (steps >= window[0]) & (steps < window[1])
    block = values[:, inside].reshape(values.shape[0], int(inside.sum()), -1)
    recorded = ~np.isnan(block).all(axis=(0, 2))
    if not recorded.any():
        return np.full((values.shape[0], block.shape[2]), np.nan)
    return block[:, recorded].mean(axis=1)


def _activation_sources(run, layers, reducer: str | None, branch: str):
    names = run.layers() if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    if not names:
        raise ValueError("The run has no recorded activations: trace the query with record=... (run_query).")
    for name in names:
        acts = run.acts(name, reducer)
        if "branch" in acts.dims:
            acts = acts.sel(branch=branch)
        yield name, None, acts.transpose("sample", "step", ...).values, acts["step"].values


def _word_slots(spec: QuerySpec, words_of: dict) -> list[tuple[str, list[tuple[int, int]]]]:
    """``[(label, span per condition)]``: each template word and its tokens in each condition's prompt."""
    if spec.template is not None:
        labels = spec.template.split()
        counts = [[len(word.format(**c).split()) for word in labels] for c in spec.conditions]
    else:
        n_words = {len(p.split()) for p in spec.prompts}
        if len(n_words) != 1:
            raise QuerySpecError("Without a template, attention contrasts need prompts with equally many words.")
        labels = [f"word {k}" for k in range(n_words.pop())]
        counts = [[1] * len(labels) for _ in spec.conditions]
    slots = []
    for k, label in enumerate(labels):
        spans = []
        for prompt, count in zip(spec.prompts, counts, strict=True):
            spans_p = words_of[prompt]
            first = sum(count[:k])
            spans.append((spans_p[first][1], spans_p[first + count[k] - 1][2]))
        slots.append((label, spans))
    return slots


def _attention_sources(run, spec: QuerySpec, layers):
    from denoisefeat.hooks.attention import aggregate_words

    names = run.attention_layers() if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    if not names:
        raise ValueError("The run has no attention maps: trace the query with attention=True (run_query).")
    slots = _word_slots(spec, run.attention_words())
    for name in names:
        maps = run.attention(name)
        for label, spans in slots:
            per_sample = [span for span in spans for _ in range(spec.samples)]
            yield name, label, aggregate_words(maps.values, per_sample), maps["step"].values


def contrast(
    run,
    spec: QuerySpec,
    *,
    source: str = "activations",
    factors: Sequence[str] | None = None,
    layers=None,
    reducer: str | None = None,
    branch: str = "cond",
    windows=3,
    n_permutations: int = 999,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Attribute each factor of a query to the layers × step windows whose activations separate its levels.

    Parameters
    ----------
    run : denoisefeat.store.Run
        Traced with ``spec`` (:func:`run_query`) and recorded activations or attention maps.
    spec : QuerySpec
    source : {"activations", "attention"}
        Compare recorded activations (``acts/...``) or each template word's attention maps.
    factors : sequence of str, optional
        Default: every factor of the spec.
    layers : str or sequence of str, optional
        Recorded layers (or attention layers) to compare; default all.
    reducer : str, optional
        Needed when a layer was recorded with several reducers.
    branch : {"cond", "uncond"}
        The CFG branch of guided runs' activations.
    windows : int or sequence of (int, int)
        Step windows (:func:`denoisefeat.steps.step_windows`).
    n_permutations : int
        Permutations per row; at least ``1 / alpha``.
    alpha : float
    seed : int

    Returns
    -------
    pandas.DataFrame
        An attribution table (:mod:`~denoisefeat.analyses.table`), ``method`` ``"contrast:activations"``
        or ``"contrast:attention"``, ``feature`` the factor; ``effect`` = ``effect_std`` the excess η²
        (scale-free), ``eta2`` the observed η², ``disruption``/``specificity`` NaN (nothing is edited);
        with ``source="attention"`` a ``word`` column.  Rank with ``rank(table, feature=factor)``.

    Raises
    ------
    QuerySpecError
        The run was not traced with ``spec``, an unknown factor, or attention contrasts of a class query.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if n_permutations < min_resamples(alpha):
        raise ValueError(f"n_permutations={n_permutations} cannot give p < alpha={alpha}; use at least "
                         f"{min_resamples(alpha)} (999 or more for stable intervals).")
    if source == "attention" and spec.prompts is None:
        raise QuerySpecError("Attention contrasts need a prompt query (a template), not class conditions.")
    spec.check_run(run)
    names = list(spec.factors) if factors is None else list(factors)
    for factor in names:
        spec.levels(factor)  # refuses an unknown factor
    sources = (_activation_sources(run, layers, reducer, branch) if source == "activations"
               else _attention_sources(run, spec, layers))
    rows = []
    for layer, word, values, steps in sources:
        values = values[: spec.n_samples]
        for window in step_windows(windows, steps):
            x = _window_vectors(values, steps, window)
            if np.isnan(x).any():
                continue  # the window's steps were not recorded
            for factor in names:
                inference, eta2, n = eta_squared(x, spec.levels(factor), spec.strata(factor),
                                                 n_permutations=n_permutations, alpha=alpha, seed=seed)
                row = {"feature": factor, "layer": layer, "step_start": int(window[0]), "step_stop": int(window[1]),
                       "method": f"contrast:{source}", "effect": inference.estimate, "ci_low": inference.ci_low,
                       "ci_high": inference.ci_high, "p": inference.p, "n": n, "effect_std": inference.estimate,
                       "disruption": np.nan, "specificity": np.nan, "eta2": eta2}
                if word is not None:
                    row["word"] = word
                rows.append(row)
    if not rows:
        raise ValueError("No step window of the chosen layers was recorded: nothing to contrast.")
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("p") + 1, "p_adj", benjamini_hochberg(frame["p"]))
    frame["n"] = frame["n"].astype(np.int64)
    frame.attrs.update(method="contrast", source=source, n_permutations=n_permutations, alpha=alpha)
    return validate(frame)
