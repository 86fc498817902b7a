"""Attribution analyses: ablation scans and attribution tables (and, lazily, correlation and regression)."""

from __future__ import annotations

import importlib

from denoisefeat.analyses.ablation import (
    ABLATION_METHODS,
    FEATURE_GROUPS,
    ablation_scan,
    resolve_features,
    step_windows,
)
from denoisefeat.analyses.table import (
    COLUMNS,
    benjamini_hochberg,
    rank,
    read_attribution,
    to_xarray,
    validate,
    write_attribution,
)

_LAZY = {"correlate": ".correlation", "feature_change": ".correlation", "regress": ".regression"}

__all__ = [
    "ABLATION_METHODS",
    "FEATURE_GROUPS",
    "ablation_scan",
    "resolve_features",
    "step_windows",
    "COLUMNS",
    "benjamini_hochberg",
    "rank",
    "read_attribution",
    "to_xarray",
    "validate",
    "write_attribution",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
