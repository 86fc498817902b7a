"""Probe results over a run's layers and step windows, as an attribution table.

The attribution table (:mod:`denoisefeat.analyses.table`) is the tidy frame every attribution method
of denoisefeat returns, one row per feature × layer × step window::

    feature  layer  step_start  step_stop  method  effect  ci_low  ci_high  p  p_adj  n

For probes, ``effect`` (and ``effect_std``: it is scale-free) is the selectivity (the probe's score
minus its control's), ``ci_low``/``ci_high`` and ``p`` come from one paired bootstrap of it, and
``p_adj`` is Benjamini–Hochberg over all rows of the table.  A probe does not intervene, so
``disruption`` and ``specificity`` are NaN.  :func:`~denoisefeat.analyses.table.rank` ranks larger
selectivities first; a negative one (worse than the control) is wrong-signed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from denoisefeat.probes.controls import xt_features
from denoisefeat.probes.linear import fit

__all__ = ["CONTROLS", "probe_table"]

CONTROLS = ("xt", "shuffled")


def probe_table(
    run,
    *,
    targets: Mapping,
    layers: str | Sequence[str] | None = None,
    reducer: str | None = None,
    control: str | Mapping = "xt",
    branch: str = "cond",
    kind: str = "auto",
    windows=None,
    cv: int = 5,
    groups=None,
    alphas=None,
    n_shuffles: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    xt_size: int = 8,
) -> pd.DataFrame:
    """Fit a probe per target × recorded layer × step window and tabulate the selectivities.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run with recorded activations (``trace(..., record=...)``).
    targets : mapping of str to array_like or xarray.DataArray
        ``{feature name: target}``; each target is one value per sample or per (sample, step), as
        for :func:`denoisefeat.probes.fit`.
    layers : str or sequence of str, optional
        Recorded layers to probe; default all of ``run.layers()``.
    reducer : str, optional
        Which record of each layer, when a layer was recorded with several reducers.
    control : {"xt", "shuffled"} or mapping of str to xarray.DataArray
        The selectivity baseline: ``"xt"`` a probe on the pooled x_t
        (:func:`~denoisefeat.probes.controls.xt_features`), ``"shuffled"`` the shuffled-target probe,
        or ``{layer: control activations}`` (e.g. from
        :func:`~denoisefeat.probes.controls.random_init_acts`).
    branch : {"cond", "uncond"}
        Under classifier-free guidance, the branch whose activations are probed.
    kind, windows, cv, groups, alphas, n_shuffles, n_boot, ci, seed
        As for :func:`denoisefeat.probes.fit`.
    xt_size : int
        Pooled size of x_t for ``control="xt"``.

    Returns
    -------
    pandas.DataFrame
        The attribution table (``method == "probe"``): ``effect`` and ``effect_std`` are the
        selectivity, with its paired bootstrap CI and the two-sided bootstrap p of the same
        resamples, ``p_adj`` Benjamini–Hochberg over the table, ``n`` the samples scored;
        ``disruption`` and ``specificity`` are NaN (not an intervention).  Extra columns: ``score`` (R²
        or accuracy of the probe), ``baseline`` (its control's score) and ``metric`` (``"r2"`` or
        ``"accuracy"``).

    Raises
    ------
    ValueError
        No targets, an unknown control, or a layer missing from a control mapping.
    KeyError
        A layer that was not recorded (the message lists the recorded ones).
    """
    from denoisefeat.analyses.table import COLUMNS, benjamini_hochberg, validate  # heavy: imports the ablation scans

    if not isinstance(targets, Mapping) or not targets:
        raise ValueError("targets must be a non-empty mapping {feature name: one value per sample}.")
    layers = run.layers() if layers is None else [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("The run has no recorded activations; trace it with record={layer: reducer}.")
    if isinstance(control, str):
        if control not in CONTROLS:
            raise ValueError(f"control must be 'xt', 'shuffled' or a mapping {{layer: activations}}; got {control!r}.")
        controls = dict.fromkeys(layers, xt_features(run, size=xt_size) if control == "xt" else None)
    elif isinstance(control, Mapping):
        missing = [layer for layer in layers if layer not in control]
        if missing:
            raise ValueError(f"control has no activations for layers {missing}; it has {list(control)}.")
        controls = dict(control)
    else:
        raise ValueError(
            f"control must be 'xt', 'shuffled' or a mapping {{layer: activations}}; got {type(control).__name__}."
        )

    rows = []
    for layer in layers:
        acts = run.acts(layer, reducer)
        if "branch" in acts.dims:
            branches = list(acts["branch"].values)
            if branch not in branches:
                raise ValueError(f"branch must be one of {branches}; got {branch!r}.")
            acts = acts.sel(branch=branch)
        layer_control = controls[layer]
        if layer_control is not None and "branch" in layer_control.dims:
            layer_control = layer_control.sel(branch=branch)
        for feature, target in targets.items():
            result = fit(
                acts, target, kind=kind, control=layer_control, windows=windows, cv=cv, groups=groups,
                alphas=alphas, n_shuffles=n_shuffles, n_boot=n_boot, ci=ci, seed=seed,
            )
            baseline = result["control"] if "control" in result else result["shuffled"]
            for i in range(result.sizes["step"]):
                rows.append({
                    "feature": str(feature), "layer": layer,
                    "step_start": int(result["step"][i]), "step_stop": int(result["step_stop"][i]),
                    "method": "probe", "effect": float(result["selectivity"][i]),
                    "ci_low": float(result["selectivity_ci_low"][i]),
                    "ci_high": float(result["selectivity_ci_high"][i]),
                    "p": float(result["p"][i]), "p_adj": np.nan, "n": int(result["n"][i]),
                    # a selectivity is scale-free; a probe does not intervene: no disruption, no specificity
                    "effect_std": float(result["selectivity"][i]), "disruption": np.nan, "specificity": np.nan,
                    "score": float(result["score"][i]), "baseline": float(baseline[i]),
                    "metric": result.attrs["metric"],
                })
    table = pd.DataFrame(rows, columns=[*COLUMNS, "score", "baseline", "metric"])
    from denoisefeat.analyses.inference import min_resamples

    permuted = isinstance(control, str) and control == "shuffled" and n_shuffles >= min_resamples(1 - ci)
    table.attrs.update(alpha=1 - ci, ci_level=ci, n_boot=n_boot, inference="permutation" if permuted else "bootstrap")
    table["p_adj"] = benjamini_hochberg(table["p"].to_numpy(dtype=float))
    return validate(table.astype({"step_start": int, "step_stop": int, "n": int}))
