"""Attribution analyses: which layers and steps drive which image feature.

* :func:`ablation_scan` — ablate each layer in each step window, measure the feature change;
* :func:`causal_trace` — restore clean activations in a corrupted run (activation patching);
* ``attribution_patching`` — a first-order estimate of every layer × step ablation from one backward
  pass through the sampling chain, and ``attribution_study`` — it ranks, the exact scan checks the
  top cells (:mod:`~denoisefeat.analyses.attribution_patching`);
* :mod:`~denoisefeat.analyses.table` — the shared attribution table: :func:`validate`,
  :func:`write_attribution` / :func:`read_attribution` / :func:`attribution_names` (run store),
  :class:`CellImages` / :func:`read_cell_images` (the final images a scan kept, ``keep_images``),
  :func:`to_xarray`, :func:`rank`, :func:`benjamini_hochberg`;
* ``correlate``, ``feature_change`` (:mod:`~denoisefeat.analyses.correlation`) and ``regress``
  (:mod:`~denoisefeat.analyses.regression`), imported on first use;
* the field's known facts, one analysis each, imported on first use: ``band_snr``
  (coarse-to-fine per-band SNR), ``skip_spectrum`` (skip vs backbone spectra), ``step_similarity``
  (adjacent-step similarity of blocks) and ``perturbation_timing`` (early vs late perturbations), and
  ``known_facts`` (:mod:`~denoisefeat.analyses.facts`), all four on one model;
* feature-specific queries: :class:`QuerySpec` (:mod:`~denoisefeat.analyses.query`:
  prompts or class conditions varying one factor at a time), :func:`run_query` and :func:`contrast`
  (:mod:`~denoisefeat.analyses.contrast`: which layers × steps and which words' attention maps
  separate a factor's levels).
"""

from __future__ import annotations

import importlib

from denoisefeat.analyses.ablation import (
    ABLATION_METHODS,
    CORRUPTIONS,
    FEATURE_GROUPS,
    ablation_scan,
    causal_trace,
    resolve_features,
)

# imported eagerly: a lazy name equal to its module's would be shadowed by the module once imported
from denoisefeat.analyses.attribution_patching import attribution_patching, attribution_study
from denoisefeat.analyses.contrast import contrast, run_query  # after the module: the name is the function
from denoisefeat.analyses.query import QuerySpec, QuerySpecError
from denoisefeat.analyses.table import (
    COLUMNS,
    CellImages,
    attribution_names,
    benjamini_hochberg,
    rank,
    read_attribution,
    read_cell_images,
    to_xarray,
    validate,
    write_attribution,
)

_LAZY = {"correlate": ".correlation", "feature_change": ".correlation", "regress": ".regression",
         "band_snr": ".coarse_to_fine", "skip_spectrum": ".skips", "step_similarity": ".similarity",
         "perturbation_timing": ".perturbation", "known_facts": ".facts"}

__all__ = [
    "ABLATION_METHODS",
    "CORRUPTIONS",
    "FEATURE_GROUPS",
    "ablation_scan",
    "causal_trace",
    "resolve_features",
    "attribution_patching",
    "attribution_study",
    "QuerySpec",
    "QuerySpecError",
    "contrast",
    "run_query",
    "COLUMNS",
    "CellImages",
    "attribution_names",
    "benjamini_hochberg",
    "rank",
    "read_attribution",
    "read_cell_images",
    "to_xarray",
    "validate",
    "write_attribution",
    *_LAZY,
]


def __getattr__(name: str):
    """PEP 562: import the correlation and regression analyses only when they are used."""
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
