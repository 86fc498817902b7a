"""The attribution table: the shared tidy result format of every attribution analysis.

An attribution table is a :class:`pandas.DataFrame` with one row per
(feature, layer, step window, method) and the columns of :data:`COLUMNS`:

``feature`` (str), ``layer`` (str, module path), ``step_start`` / ``step_stop`` (int,
half-open step window), ``method`` (str, e.g. ``"ablation:zero"``, ``"causal_tracing"``),
``effect`` (float), ``ci_low`` / ``ci_high`` (float), ``p`` (float, NaN where undefined),
``p_adj`` (Benjamini-Hochberg corrected over the grid) and ``n`` (int, samples).
Extra columns (e.g. ``band``, ``baseline``, ``recovered_fraction``) are allowed and kept.

Tables are stored in a run store under ``attribution/<name>`` as one array per column;
string columns are stored as integer codes with their categories in the array attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from statsmodels.stats.multitest import multipletests

from denoisefeat.store import COMPRESSORS, Run, RunStore, StoreError

__all__ = ["COLUMNS", "validate", "benjamini_hochberg", "write_attribution", "attribution_names", "read_attribution", "to_xarray", "rank"]

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
}

_GROUP = "attribution"


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
        A valid attribution table (see :func:`validate`); extra columns are stored too.
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
    root = store.group.require_group(_GROUP)
    if name in root:
        if not overwrite:
            raise StoreError(f"Attribution table {name!r} already exists; pass overwrite=True to replace it.")
        del root[name]
    group = root.create_group(name)
    columns = []
    for column in frame.columns:
        values = frame[column]
        if not isinstance(column, str):
            raise ValueError(f"Column names must be strings, got {column!r}.")
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            data = values.to_numpy()
            array = group.create_array(column, shape=data.shape, dtype=data.dtype, compressors=COMPRESSORS)
            array[...] = data
            array.attrs["kind"] = "numeric"
        else:
            codes, categories = pd.factorize(values.astype(str))
            data = codes.astype(np.int32)
            array = group.create_array(column, shape=data.shape, dtype=data.dtype, compressors=COMPRESSORS)
            array[...] = data
            array.attrs.update({"kind": "str", "categories": [str(c) for c in categories]})
        columns.append(column)
    group.attrs.update({"columns": columns, "n_rows": len(frame)})
    store.finalize()  # re-consolidate: readers of a finished run see its metadata through the consolidated copy


def _read_table(group: zarr.Group) -> pd.DataFrame:
    data = {}
    for column in group.attrs["columns"]:
        array = group[column]
        values = np.asarray(array[...])
        if array.attrs.get("kind") == "str":
            categories = np.asarray(array.attrs["categories"], dtype=object)
            values = categories[values] if len(categories) else np.asarray([], dtype=object)
        data[column] = values
    return pd.DataFrame(data, columns=list(group.attrs["columns"]))


def attribution_names(store_or_path) -> list[str]:
    """Names of the attribution tables a run store holds (sorted; empty when it holds none).

    Parameters
    ----------
    store_or_path : Run, RunStore, zarr.Group, str or path

    Returns
    -------
    list of str
    """
    store = _open_store(store_or_path, "r")
    return sorted(store.group[_GROUP].group_keys()) if _GROUP in store.group else []


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
    """
    store = _open_store(store_or_path, "r")
    names = attribution_names(store)
    root = store.group[_GROUP] if names else None
    if name is None:
        if not names:
            raise KeyError("The store holds no attribution tables.")
        frames = [_read_table(root[n]).assign(table=n) for n in names]
        return pd.concat(frames, ignore_index=True)
    if name not in names:
        raise KeyError(f"No attribution table {name!r}; the store holds {names}.")
    return _read_table(root[name])


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
        Variables ``effect``, ``ci_low``, ``ci_high``, ``p``, ``p_adj``, ``n`` over dims
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
    values = ["effect", "ci_low", "ci_high", "p", "p_adj", "n"]
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


def rank(frame: pd.DataFrame, *, feature: str, method: str | None = None, top: int = 10) -> pd.DataFrame:
    """Top (layer, window) rows for one feature.

    Rows whose confidence interval excludes zero come first, then within each group rows are
    ordered by decreasing ``|effect|``.

    Parameters
    ----------
    frame : pandas.DataFrame
        A valid attribution table.
    feature : str
        Feature to rank (must appear in ``frame``).
    method : str, optional
        Keep only this method.
    top : int
        Number of rows to return.

    Returns
    -------
    pandas.DataFrame
        The selected rows with an extra boolean column ``significant`` (CI excludes 0).
    """
    validate(frame)
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}.")
    features = sorted(pd.unique(frame["feature"]))
    if feature not in features:
        raise ValueError(f"Unknown feature {feature!r}; the table has {features}.")
    rows = frame[frame["feature"] == feature]
    if method is not None:
        methods = sorted(pd.unique(rows["method"]))
        if method not in methods:
            raise ValueError(f"Unknown method {method!r} for feature {feature!r}; the table has {methods}.")
        rows = rows[rows["method"] == method]
    rows = rows.assign(
        significant=(rows["ci_low"] > 0) | (rows["ci_high"] < 0),
        _abs=rows["effect"].abs(),
    )
    rows = rows.sort_values(["significant", "_abs"], ascending=[False, False], kind="stable")
    return rows.drop(columns="_abs").head(top).reset_index(drop=True)
