"""Probe targets read from a run: properties of its final images and the labels it was asked for.

* :func:`final_feature_targets` — image properties of each sample's final image (edge density,
  texture energy, CIELAB colour, …): the metrics of :data:`denoisefeat.metrics.METRICS` that need
  no reference, one value per sample;
* :func:`label_targets` — the conditioning of a class-conditional run: for the DiffShapes toy model
  its shape, colour and texture names, for another class-conditional model the class label.

Both return ``{name: xarray.DataArray (sample,)}``, the ``targets`` of
:func:`denoisefeat.probes.probe_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["DEFAULT_FEATURE_TARGETS", "final_feature_targets", "is_diffshapes_run", "label_targets"]

#: Reference-free metrics of the final image probed by default: edges, texture and colour.
DEFAULT_FEATURE_TARGETS: tuple[str, ...] = (
    "edge_density", "edge_sharpness", "glcm_contrast", "wavelet_texture_energy", "lab_l", "lab_a", "lab_b",
    "colorfulness",
)


def final_feature_targets(run, *, metrics: Sequence[str] | None = None) -> dict[str, xr.DataArray]:
    """Reference-free metrics of each sample's final image.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A traced run (its ``final`` images, RGB in [0, 1]).
    metrics : sequence of str, optional
        Names in :data:`denoisefeat.metrics.METRICS` that need no reference; default
        :data:`DEFAULT_FEATURE_TARGETS`.

    Returns
    -------
    dict of str to xarray.DataArray
        ``{metric: values (sample,)}``, labelled with the run's sample coordinate.

    Raises
    ------
    ValueError
        A metric that is unknown (the message lists close matches) or needs a reference image.
    """
    from denoisefeat.metrics import METRICS, compute_metrics

    names = list(DEFAULT_FEATURE_TARGETS if metrics is None else metrics)
    for name in names:
        if name not in METRICS:
            import difflib

            close = difflib.get_close_matches(name, list(METRICS), n=3)
            raise ValueError(f"Unknown metric {name!r} as a probe target; did you mean {close}?"
                             if close else f"Unknown metric {name!r} as a probe target.")
        if METRICS[name].needs_reference is not None:
            free = [m for m, spec in METRICS.items() if spec.needs_reference is None]
            raise ValueError(f"{name!r} compares with a reference image and is no property of the final image; "
                             f"probe one of {free}.")
    final = run["final"]
    values = compute_metrics(np.asarray(final.values, dtype=np.float32), names=names)
    sample = final["sample"].values
    return {name: xr.DataArray(np.asarray(values[name], dtype=np.float64), dims=("sample",),
                               coords={"sample": sample}, name=name) for name in names}


def label_targets(run) -> dict[str, xr.DataArray]:
    """The conditioning of each sample of a class-conditional run, as categorical targets.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run traced with ``class_labels``.

    Returns
    -------
    dict of str to xarray.DataArray
        For a run of the DiffShapes toy model (:func:`is_diffshapes_run`) whose samples are all
        conditional: ``{"shape", "color", "texture"}`` with the names of each sample's condition;
        otherwise ``{"class_label": label}``.

    Raises
    ------
    ValueError
        The run was not traced with class labels (a text-conditional or unconditional run).
    """
    from denoisefeat.toy.diffshapes import NUM_CONDITIONS, condition_names

    attrs = run.attrs
    labels = attrs.get("class_labels")
    if labels is None:
        raise ValueError("The run has no class labels (it was traced with prompts or unconditionally); "
                         "probe final-image features instead.")
    sample = run["final"]["sample"].values
    labels = np.asarray(labels, dtype=np.int64)[: len(sample)]
    if not (is_diffshapes_run(attrs) and bool(np.all(labels < NUM_CONDITIONS))):  # the null label names nothing
        return {"class_label": xr.DataArray(labels, dims=("sample",), coords={"sample": sample}, name="class_label")}
    names = np.array([condition_names(int(label)) for label in labels], dtype=object)
    return {part: xr.DataArray(names[:, i].astype(str), dims=("sample",), coords={"sample": sample}, name=part)
            for i, part in enumerate(("shape", "color", "texture"))}


def is_diffshapes_run(attrs) -> bool:
    """Whether a run's class labels are DiffShapes conditions, from what its store says it is.

    The pipeline declares it (``label_set``, :data:`denoisefeat.models.TOY_LABEL_SET`), and
    :func:`denoisefeat.trace` records it in the run's attributes; a store written before runs
    recorded it says so by its ``model_id``: ``"toy"`` (``load_pipeline("toy")`` from the CLI or
    the cluster jobs) or the toy model's weights folder.

    Parameters
    ----------
    attrs : mapping
        The run's attributes (:attr:`denoisefeat.store.Run.attrs`).

    Returns
    -------
    bool
    """
    from denoisefeat.models import TOY_LABEL_SET

    if attrs.get("label_set") is not None:
        return attrs["label_set"] == TOY_LABEL_SET
    model_id = str(attrs.get("model_id") or "")
    return model_id == "toy" or Path(model_id).parts[-3:] == ("denoisefeat", "toy", "weights")
