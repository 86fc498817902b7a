"""The attribution table: the shared tidy result format of every attribution analysis.

An attribution table is a :class:`pandas.DataFrame` with one row per
(feature, layer, step window, method) and the columns of :data:`COLUMNS`:

``feature`` (str), ``layer`` (str, module path), ``step_start`` / ``step_stop`` (int,
half-open step window), ``method`` (str, e.g. ``"ablation:zero"``, ``"causal_tracing"``),
``effect`` (float, the raw effect in the feature's units), ``ci_low`` / ``ci_high`` (float, its
``1 − alpha`` interval), ``p`` (float, NaN where undefined), ``p_adj`` (Benjamini-Hochberg over the
table), ``n`` (int, samples), ``effect_std`` (the standardised, scale-free effect),
``disruption`` (how much the cell changed the whole final image; NaN for methods that do not
intervene) and ``specificity`` (how much more the cell moves this feature than the image as a
whole; NaN for methods that do not intervene).  Every method defines these in its docstring; the
docs page ``docs/reading-attribution-tables.md`` explains how to read them.

Rules every table follows:

* CI and p of a row come from one procedure (a bootstrap with its own p-value,
  :mod:`denoisefeat.analyses.inference`, or a Wald interval with its Wald test), so a row with
  ``p_adj < alpha`` always has a ``1 − alpha`` interval that excludes 0;
* effects that float rounding alone could produce are exactly zero, with ``p = 1``;
* :func:`rank` orders each method's rows in its documented direction (:data:`DIRECTIONS`).

Extra columns (e.g. ``band``, ``baseline``, ``recovered_fraction``) are allowed and kept.
A scan run with ``keep_images=k`` (:func:`~denoisefeat.analyses.ablation_scan`,
:func:`~denoisefeat.analyses.causal_trace`) puts a :class:`CellImages` in ``attrs["images"]``: the
final images of its first ``k`` samples, clean and per edited cell; :func:`write_attribution`
stores them beside the table (:func:`denoisefeat.store.cell_images_path`) and
:func:`read_cell_images` reads them back lazily.
Tables are stored in a run store under ``attribution/<name>`` as one array per column;
string columns are stored as integer codes with their categories in the array attributes.  Tables
written before format :data:`TABLE_FORMAT` (denoisefeat 0.1) are refused on reading with
:class:`StaleTableError`, whose message says how to recompute them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from statsmodels.stats.multitest import multipletests

from denoisefeat.store import Run, RunStore, StoreError, attribution_path, cell_images_path

__all__ = [
    "COLUMNS",
    "method_family",
    "DIRECTIONS",
    "INTERVENTIONS",
    "RANK_BY",
    "TABLE_FORMAT",
    "StaleTableError",
    "CellImages",
    "validate",
    "benjamini_hochberg",
    "specificity",
    "write_attribution",
    "attribution_names",
    "read_attribution",
    "read_cell_images",
    "to_xarray",
    "rank",
]

#: Required columns and their kind: "str", "int" or "float".
COLUMNS: dict[str, str] = {
    "feature": "str",
    "layer": "str",
    "step_start": "int",
    "step_stop": "int",
    "method": "str",
    "effect": "float",
    "ci_low": "float",
    "ci_high": "float",
    "p": "float",
    "p_adj": "float",
    "n": "int",
    "effect_std": "float",
    "disruption": "float",
    "specificity": "float",
}

#: Version of the stored table layout: 2 added ``effect_std``, ``disruption``, ``specificity`` and
#: one inference procedure per row; tables of format 1 (denoisefeat 0.1) are refused on reading.
TABLE_FORMAT = 2

#: How :func:`rank` orders each method family's rows (the family is the method name before ``:``):
#: ``"magnitude"``: a larger ``|value|`` drives the feature more, either sign is right (ablation
#: and its first-order estimate, attribution patching: a change of the feature; correlation and
#: regression: an association); ``"larger"``: a larger
#: signed value is better and a negative one is wrong-signed (causal tracing: recovered fraction;
#: probes: selectivity over the control; contrasts: η² over its permutation mean).
DIRECTIONS: dict[str, str] = {
    "ablation": "magnitude",
    "causal_tracing": "larger",
    "probe": "larger",
    "pearson": "magnitude",
    "spearman": "magnitude",
    "ols": "magnitude",
    "mixedlm": "magnitude",
    "perturbation": "magnitude",
    "attribution_patching": "magnitude",
    "contrast": "larger",
}

#: Method families that intervene on the model (or estimate an intervention, as attribution patching
#: does): their rows carry a disruption and a specificity.
INTERVENTIONS = ("ablation", "causal_tracing", "perturbation", "attribution_patching")

#: What :func:`rank` can order by: the standardised effect or the specificity.
RANK_BY: dict[str, str] = {"effect": "effect_std", "specificity": "specificity"}


class StaleTableError(StoreError):
    """An attribution table written by an older format (:data:`TABLE_FORMAT`): recompute it."""

_CELL_KEYS = ("layer", "step_start", "step_stop", "method")


@dataclass(frozen=True, eq=False)
class CellImages:
    """The final images of a scan's first samples: of the unedited run and of every edited cell.

    A cell is one edited run: a ``(layer, step_start, step_stop, method)`` of the table, whose rows
    of every feature it shares.  Immutable (a deep copy is the object itself, so that pandas,
    which deep-copies a frame's ``attrs``, never copies the images).

    Parameters
    ----------
    cells : sequence of (str, int, int, str)
        ``(layer, step_start, step_stop, method)`` of each edited run, in the order of ``edited``.
    clean : array_like
        ``(sample, 3, H, W)`` in [0, 1]: the unedited (clean) run's final images.
    edited : array_like
        ``(cell, sample, 3, H, W)`` in [0, 1]: each edited run's final images.
    corrupted : array_like, optional
        ``(sample, 3, H, W)``: causal tracing's corrupted run, which the patches start from.

    Notes
    -----
    Made by a scan, the arrays are float32 numpy arrays; read from a store
    (:func:`read_cell_images`), zarr arrays that read only the images indexed.  Memory of a scan's
    images: ``(cells + 2) × k × 3 × H × W × 4`` bytes (a 512 px model, 4 samples, 35 cells: 440 MB).
    """

    cells: tuple[tuple[str, int, int, str], ...]
    clean: object
    edited: object
    corrupted: object = None

    def __post_init__(self):
        cells = tuple((str(layer), int(start), int(stop), str(method)) for layer, start, stop, method in self.cells)
        object.__setattr__(self, "cells", cells)
        shape = tuple(self.edited.shape)
        if len(shape) != 5 or shape[0] != len(cells) or shape[2] != 3 or tuple(self.clean.shape) != shape[1:]:
            raise ValueError(f"CellImages: edited {shape} must be (cell={len(cells)}, *clean.shape) and clean "
                             f"{tuple(self.clean.shape)} (sample, 3, H, W)")
        if self.corrupted is not None and tuple(self.corrupted.shape) != shape[1:]:
            raise ValueError(f"CellImages: corrupted {tuple(self.corrupted.shape)} must match clean {shape[1:]}")
        for name in ("clean", "edited", "corrupted"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = np.array(value, dtype=np.float32)
                value.flags.writeable = False
                object.__setattr__(self, name, value)

    def __deepcopy__(self, memo):
        return self

    @property
    def n_samples(self) -> int:
        """The samples kept (the scan's first ones)."""
        return int(self.clean.shape[0])

    def index(self, layer: str, step_start: int, step_stop: int, method: str) -> int:
        """The position of a cell in :attr:`edited`.

        Parameters
        ----------
        layer : str
        step_start, step_stop : int
        method : str
            The table's method name (e.g. ``"ablation:zero"``).

        Returns
        -------
        int

        Raises
        ------
        KeyError
            No image was kept for that cell.
        """
        key = (str(layer), int(step_start), int(step_stop), str(method))
        try:
            return self.cells.index(key)
        except ValueError:
            raise KeyError(f"no images kept for cell {key}") from None


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    """Check that ``frame`` is an attribution table.

    Parameters
    ----------
    frame : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
        The same frame (unchanged) so calls can be chained.

    Raises
    ------
    TypeError
        If ``frame`` is not a DataFrame.
    ValueError
        Naming every missing column and every column of the wrong kind, or a window with
        ``step_stop <= step_start``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"An attribution table must be a pandas.DataFrame, got {type(frame).__name__}.")
    missing = [c for c in COLUMNS if c not in frame.columns]
    wrong = []
    for column, kind in COLUMNS.items():
        if column not in frame.columns:
            continue
        values = frame[column]
        if kind == "str":
            ok = values.map(lambda v: isinstance(v, str)).all()
        elif kind == "int":
            ok = pd.api.types.is_integer_dtype(values)
        else:
            ok = pd.api.types.is_float_dtype(values) or pd.api.types.is_integer_dtype(values)
        if not ok:
            wrong.append(f"{column!r} (expected {kind}, got {values.dtype})")
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if wrong:
        problems.append("wrong column types: " + ", ".join(wrong))
    if problems:
        raise ValueError(
            "Not an attribution table: " + "; ".join(problems) + f". Required columns: {list(COLUMNS)}."
        )
    bad = frame["step_stop"] <= frame["step_start"]
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} row(s) have step_stop <= step_start; windows are half-open [start, stop) and non-empty."
        )
    return frame


def specificity(effect: float, disruption: float) -> float:
    """How much more a cell moves a feature than the whole image: ``effect / disruption``.

    Parameters
    ----------
    effect : float
        The row's effect in the scale-free units its family ranks by (``|effect_std|`` for
        ablations, the signed recovered fraction for causal tracing).
    disruption : float
        How far the same cell moved the whole image (``disruption`` column).

    Returns
    -------
    float
        ``effect / disruption``; 0 where nothing moved (NaN where the effect is NaN), NaN where
        the disruption is unknown.
    """
    if np.isnan(disruption):
        return float("nan")
    return effect / disruption if disruption > 0 else 0.0 * effect


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``multipletests``, ``fdr_bh``).

    Parameters
    ----------
    p : array_like
        Raw p-values; NaN entries are left NaN and do not count as tests.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape as ``p``.
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="fdr_bh")[1]
    return out


def _open_store(store_or_path, mode: str) -> RunStore:
    if isinstance(store_or_path, Run):
        return store_or_path.store
    if isinstance(store_or_path, RunStore):
        return store_or_path
    if isinstance(store_or_path, (str, Path, zarr.Group)):
        return RunStore.open(store_or_path, mode=mode)
    raise TypeError(
        f"Expected a Run, a RunStore, a zarr group or a path to a run store, got {type(store_or_path).__name__}."
    )


def write_attribution(store_or_path, frame: pd.DataFrame, *, name: str = "default", overwrite: bool = False) -> None:
    """Write an attribution table into ``attribution/<name>`` of a run store.

    Parameters
    ----------
    store_or_path : Run, RunStore, zarr.Group, str or path
        An existing run store (a path is opened with :meth:`denoisefeat.store.RunStore.open`).
    frame : pandas.DataFrame
        A valid attribution table (see :func:`validate`); extra columns are stored too, and the
        :class:`CellImages` of ``frame.attrs["images"]`` beside it.
    name : str
        Table name.
    overwrite : bool
        Replace an existing table of the same name.

    Raises
    ------
    denoisefeat.store.StoreError
        If the table exists and ``overwrite`` is False.
    """
    validate(frame)
    if not name or "/" in name:
        raise ValueError(f"Invalid table name {name!r}: use a non-empty name without '/'.")
    store = _open_store(store_or_path, "r+")
    if name in store.attribution_tables() and not overwrite:
        raise StoreError(f"Attribution table {name!r} already exists; pass overwrite=True to replace it.")
    columns = {}
    for column in frame.columns:
        values = frame[column]
        if not isinstance(column, str):
            raise ValueError(f"Column names must be strings, got {column!r}.")
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            columns[column] = (values.to_numpy(), {"kind": "numeric"})
        else:
            codes, categories = pd.factorize(values.astype(str))
            columns[column] = (codes.astype(np.int32), {"kind": "str", "categories": [str(c) for c in categories]})
    images = frame.attrs.get("images")
    kept = None
    if isinstance(images, CellImages):
        arrays = {"clean": (("sample", "rgb", "height", "width"), images.clean),
                  "edited": (("cell", "sample", "rgb", "height", "width"), images.edited)}
        if images.corrupted is not None:
            arrays["corrupted"] = (("sample", "rgb", "height", "width"), images.corrupted)
        kept = (arrays, {"cells": [list(c) for c in images.cells]})
    # the table and its images are written whole beside the old table, then swapped in (nothing lost on a failure)
    store.write_table(attribution_path(name), columns, overwrite=overwrite, images=kept,
                      attrs={"columns": list(columns), "n_rows": len(frame), "format": TABLE_FORMAT,
                             "table_attrs": _json_attrs(frame.attrs)})
    store.finalize()  # re-consolidate: readers of a finished run see its metadata through the consolidated copy


def _json_attrs(attrs: dict) -> dict:
    """The JSON-serialisable part of a frame's ``attrs`` (numbers, strings, lists of them)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            value = value.item()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def _read_table(store: RunStore, name: str) -> pd.DataFrame:
    path = attribution_path(name)
    attrs = store.group_attrs(path)
    version = attrs.get("format", 1)
    if not isinstance(version, int) or version < TABLE_FORMAT:
        where = store.path if getattr(store, "path", None) is not None else "the store"
        raise StaleTableError(
            f"Attribution table {name!r} in {where} was written by denoisefeat 0.1 (table format {version}: no "
            "standardised effects or specificity, CI and p from different procedures); recompute it with this "
            "version (the same `denoisefeat attribute ...` or `denoisefeat demo` command with --overwrite, or "
            "write_attribution(..., overwrite=True) of a new scan)."
        )
    if version > TABLE_FORMAT:
        raise StaleTableError(
            f"Attribution table {name!r} has format {version}, newer than this denoisefeat reads "
            f"({TABLE_FORMAT}); upgrade denoisefeat."
        )
    data = {}
    for column in attrs["columns"]:
        array = store.array(f"{path}/{column}")
        values = np.asarray(array[...])
        if array.attrs.get("kind") == "str":
            categories = np.asarray(array.attrs["categories"], dtype=object)
            values = categories[values] if len(categories) else np.asarray([], dtype=object)
        data[column] = values
    frame = pd.DataFrame(data, columns=list(attrs["columns"]))
    frame.attrs.update(attrs.get("table_attrs", {}))
    return frame


def attribution_names(store_or_path) -> list[str]:
    """Names of the attribution tables a run store holds (sorted; empty when it holds none).

    Parameters
    ----------
    store_or_path : Run, RunStore, zarr.Group, str or path

    Returns
    -------
    list of str
    """
    return _open_store(store_or_path, "r").attribution_tables()


def read_attribution(store_or_path, name: str | None = None) -> pd.DataFrame:
    """Read attribution tables from a run store.

    Parameters
    ----------
    store_or_path : Run, RunStore, zarr.Group, str or path
    name : str or None
        Table to read; ``None`` reads all of them, concatenated with a ``table`` column.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    KeyError
        If the named table does not exist (the message lists those that do).
    StaleTableError
        If a table was written in an older format (the message says how to recompute it).
    """
    store = _open_store(store_or_path, "r")
    names = store.attribution_tables()
    if name is None:
        if not names:
            raise KeyError("The store holds no attribution tables.")
        frames = [_read_table(store, n).assign(table=n) for n in names]
        return pd.concat(frames, ignore_index=True)
    if name not in names:
        raise KeyError(f"No attribution table {name!r}; the store holds {names}.")
    return _read_table(store, name)


def read_cell_images(store_or_path, name: str) -> CellImages:
    """The images kept beside attribution table ``name`` (read lazily: zarr arrays).

    Parameters
    ----------
    store_or_path : Run, RunStore, zarr.Group, str or path
    name : str
        The table's name.

    Returns
    -------
    CellImages
        ``clean``, ``edited`` (and ``corrupted``) are zarr arrays: indexing one reads only its chunks.

    Raises
    ------
    KeyError
        No such table, or the table holds no images (its scan ran without ``keep_images``).
    """
    store = _open_store(store_or_path, "r")
    names = store.attribution_tables()
    if name not in names:
        raise KeyError(f"No attribution table {name!r}; the store holds {names}.")
    path = cell_images_path(name)
    if not store.holds(path):
        raise KeyError(f"Attribution table {name!r} holds no images: its scan ran without keep_images.")
    corrupted = f"{path}/corrupted"
    return CellImages(cells=[tuple(c) for c in store.group_attrs(path)["cells"]], clean=store.array(f"{path}/clean"),
                      edited=store.array(f"{path}/edited"),
                      corrupted=store.array(corrupted) if store.holds(corrupted) else None)


def _network_order(layer_order, layers: list[str]) -> list[str]:
    """Layer names in network order from a pipeline/denoiser, LayerInfo list or name list."""
    from denoisefeat.hooks.layers import LayerInfo, list_layers

    if isinstance(layer_order, str):
        raise TypeError("layer_order must be a sequence of names, not one name.")
    if not isinstance(layer_order, Sequence):  # a pipeline or a denoiser
        infos = list_layers(layer_order)
        known = {info.name for info in infos}
        unknown = [layer for layer in layers if layer not in known]
        if unknown:
            raise ValueError(f"The denoiser has no layers {unknown}; is the table from another model?")
        layer_order = [info for info in infos if info.name in set(layers)]
    items = list(layer_order)
    if items and all(isinstance(item, LayerInfo) for item in items):
        ran = sorted((i for i in items if i.order is not None), key=lambda i: i.order)
        return [i.name for i in ran] + [i.name for i in items if i.order is None]
    return [str(item) for item in items]


def to_xarray(frame: pd.DataFrame, *, layer_order=None) -> xr.Dataset:
    """Pivot an attribution table into an :class:`xarray.Dataset`.

    Parameters
    ----------
    frame : pandas.DataFrame
        A valid attribution table with one row per (feature, layer, window, method).
    layer_order : pipeline, torch.nn.Module, sequence of LayerInfo or sequence of str, optional
        Network order of the layers: a pipeline or denoiser (execution order of a probe forward
        pass, :func:`denoisefeat.hooks.list_layers`), ``list_layers`` output (sorted by ``order``)
        or the names in order.  By default the order of first appearance in ``frame`` (the scans
        emit rows in ``named_modules()`` order).

    Returns
    -------
    xarray.Dataset
        Variables ``effect``, ``effect_std``, ``disruption``, ``specificity``, ``ci_low``, ``ci_high``,
        ``p``, ``p_adj``, ``n`` over dims
        ``feature``, ``layer``, ``window``, ``method``; the ``window`` coordinate is
        ``"start:stop"`` with ``step_start`` / ``step_stop`` as extra coordinates.
        Select methods with a dict (``ds.sel({"method": "patching"})``): ``method`` is also a
        keyword of :meth:`xarray.Dataset.sel`.
    """
    validate(frame)
    frame = frame.assign(window=frame["step_start"].astype(str) + ":" + frame["step_stop"].astype(str))
    keys = ["feature", "layer", "window", "method"]
    if frame.duplicated(keys).any():
        raise ValueError("Duplicate (feature, layer, window, method) rows; aggregate or split the table first.")
    layers = list(pd.unique(frame["layer"]))
    if layer_order is not None:
        order = _network_order(layer_order, layers)
        unknown = [layer for layer in layers if layer not in order]
        if unknown:
            raise ValueError(f"layer_order lacks layers {unknown}.")
        layers = [layer for layer in order if layer in set(layers)]
    windows = frame[["window", "step_start", "step_stop"]].drop_duplicates("window")
    windows = windows.sort_values(["step_start", "step_stop"])
    values = ["effect", "effect_std", "disruption", "specificity", "ci_low", "ci_high", "p", "p_adj", "n"]
    ds = xr.Dataset.from_dataframe(frame.set_index(keys)[values])
    ds = ds.reindex(
        {
            "feature": list(pd.unique(frame["feature"])),
            "layer": layers,
            "window": windows["window"].tolist(),
            "method": list(pd.unique(frame["method"])),
        }
    )
    return ds.assign_coords(
        step_start=("window", windows["step_start"].to_numpy()),
        step_stop=("window", windows["step_stop"].to_numpy()),
    )


def method_family(method: str) -> str:
    """The family of a method name: the part before ``":"`` (``"ablation:zero"`` → ``"ablation"``).

    Parameters
    ----------
    method : str
        A table's method name.

    Returns
    -------
    str
        Its family.
    """
    return str(method).split(":", 1)[0]


def rank(
    frame: pd.DataFrame,
    *,
    feature: str,
    method: str | None = None,
    by: str | None = None,
    alpha: float = 0.05,
    top: int = 10,
) -> pd.DataFrame:
    """Top (layer, window) rows for one feature, in the method's documented direction.

    Rows are ordered in two tiers: first the rows that are significant (``p_adj < alpha``) **and**
    right-signed for their method (:data:`DIRECTIONS`: any sign for ``"magnitude"`` methods, a
    positive value for ``"larger"`` methods), then every other row; within each tier by the
    criterion ``by``, best first (``|value|`` for magnitude methods, the signed value for
    ``"larger"`` methods), NaN last.  So a non-significant or wrong-signed row never ranks above a
    significant right-signed one.

    Parameters
    ----------
    frame : pandas.DataFrame
        A valid attribution table.
    feature : str
        Feature to rank (must appear in ``frame``).
    method : str, optional
        Keep only this method.  Without it, the feature's rows must belong to one method family
        (e.g. ``ablation:zero`` and ``ablation:mean``), whose effects share a direction and a scale.
    by : {"effect", "specificity"}, optional
        ``"effect"``: the standardised effect ``effect_std`` (within one feature and table the same
        order as the raw ``effect``); ``"specificity"``: how much more the cell moves this feature
        than the whole image (intervention methods only).  Default: ``"specificity"`` for methods
        that intervene or estimate an intervention (ablation, causal tracing, perturbation,
        attribution patching: the most specific cause, not the cell that breaks everything, such as
        an output block), ``"effect"`` for the others.
    alpha : float
        Significance level of ``p_adj``.
    top : int
        Number of rows to return.

    Returns
    -------
    pandas.DataFrame
        The selected rows with an extra boolean column ``significant`` (``p_adj < alpha``).

    Raises
    ------
    ValueError
        An empty table, an unknown feature, method, family or criterion, rows of several method
        families, or ``by="specificity"`` for rows without a specificity (a method that does not
        intervene, attribution patching without disruption probes).
    """
    validate(frame)
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}.")
    if by is not None and by not in RANK_BY:
        raise ValueError(f"Unknown ranking criterion {by!r}; valid: {', '.join(map(repr, RANK_BY))}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if frame.empty:
        raise ValueError("The attribution table is empty: nothing to rank.")
    features = sorted(pd.unique(frame["feature"]))
    if feature not in features:
        raise ValueError(f"Unknown feature {feature!r}; the table has {features}.")
    rows = frame[frame["feature"] == feature]
    if method is not None:
        methods = sorted(pd.unique(rows["method"]))
        if method not in methods:
            raise ValueError(f"Unknown method {method!r} for feature {feature!r}; the table has {methods}.")
        rows = rows[rows["method"] == method]
    families = sorted({method_family(m) for m in rows["method"]})
    if len(families) > 1:
        raise ValueError(
            f"Feature {feature!r} has rows of methods {sorted(pd.unique(rows['method']))}, whose effects are not "
            "on one scale: pass method=... to rank one of them."
        )
    family = families[0]
    if family not in DIRECTIONS:
        raise ValueError(f"No ranking direction is known for method {family!r}; known: {', '.join(DIRECTIONS)}.")
    if by is None:
        by = "specificity" if family in INTERVENTIONS else "effect"
    values = rows[RANK_BY[by]].to_numpy(dtype=float)
    if by == "specificity" and np.isnan(values).all():
        why = ("its rows carry no disruption estimate" if family in INTERVENTIONS
               else "it does not intervene on the model")
        raise ValueError(f"Method {family!r} has no specificity ({why}): rank by='effect'.")
    larger = DIRECTIONS[family] == "larger"
    significant = rows["p_adj"].to_numpy(dtype=float) < alpha
    right = (rows["effect_std"].to_numpy(dtype=float) > 0) if larger else np.ones(len(rows), dtype=bool)
    score = values if larger else np.abs(values)
    rows = rows.assign(
        significant=significant,
        _tier=~(significant & right),
        _score=np.where(np.isnan(score), -math.inf, score),
    )
    rows = rows.sort_values(["_tier", "_score"], ascending=[True, False], kind="stable")
    return rows.drop(columns=["_tier", "_score"]).head(top).reset_index(drop=True)
