"""Linear probes of recorded activations, with control baselines (scikit-learn).

* :func:`fit` — a cross-validated ridge (continuous target, R²) or logistic (categorical target,
  accuracy) probe per step window, with bootstrap CIs, shuffled-target and feature controls, and
  the selectivity ``score − control score``;
* :func:`fit_pixelwise` — a per-pixel probe from spatial activations to a binary map (edges, object
  mask), scored by IoU and F1;
* :func:`xt_features`, :func:`random_init_acts` — control features: x_t itself, and a randomly
  initialised copy of the model;
* :func:`probe_table` — probes over layers × step windows as an attribution table;
* :func:`final_feature_targets`, :func:`label_targets` — targets read from a run: properties of its
  final images, and the labels it was conditioned on.

Cross-validation always splits samples, never the steps of one sample.
"""

from denoisefeat.probes.controls import random_init_acts, xt_features
from denoisefeat.probes.linear import DEFAULT_ALPHAS, KINDS, fit
from denoisefeat.probes.pixelwise import fit_pixelwise
from denoisefeat.probes.table import CONTROLS, probe_table
from denoisefeat.probes.targets import (
    DEFAULT_FEATURE_TARGETS,
    final_feature_targets,
    is_diffshapes_run,
    label_targets,
)

__all__ = [
    "CONTROLS",
    "DEFAULT_ALPHAS",
    "DEFAULT_FEATURE_TARGETS",
    "KINDS",
    "fit",
    "final_feature_targets",
    "fit_pixelwise",
    "is_diffshapes_run",
    "label_targets",
    "probe_table",
    "random_init_acts",
    "xt_features",
]
