"""Nothing is lost on overwrite: a table (with its images) or a scan's whole store is written beside the old one
and swapped in only when complete; a failure in the middle leaves the old one readable and identical, and what a
crash leaves behind is ignored by readers and cleaned by the next write."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from test_attribution_table import make_frame
from typer.testing import CliRunner

from denoisefeat import store as store_module
from denoisefeat.analyses import table
from denoisefeat.analyses.table import CellImages, read_attribution, read_cell_images, write_attribution
from denoisefeat.cli import app
from denoisefeat.store import RunStore, attribution_path, open_run, replacement


class Injected(OSError):
    """The failure a test plants in the middle of a write (a full disk, say)."""


def _images(frame, *, value: float) -> CellImages:
    cells = list(frame[["layer", "step_start", "step_stop", "method"]].drop_duplicates().itertuples(index=False))
    clean = np.full((2, 3, 4, 4), value, dtype=np.float32)
    return CellImages(cells=cells, clean=clean, edited=np.stack([clean * 0.5] * len(cells)))


def _old_frame():
    frame = make_frame()
    frame.attrs["images"] = _images(frame, value=0.25)
    return frame


def _new_frame():
    frame = make_frame().head(5).assign(effect=7.0)
    frame.attrs["images"] = _images(frame.head(5), value=0.75)
    return frame


def _made(path):
    """A finished (consolidated) store holding the old table ``scan`` with its images."""
    store = RunStore.create(path, run_attrs={"model": "x"}, n_samples=2, n_steps=3, chunk_samples=1)
    store.mark_complete(slice(0, 2))
    store.finalize()
    write_attribution(path if path is not None else store, _old_frame(), name="scan")
    return store


def _snapshot(where):
    frame = read_attribution(where, "scan")
    kept = read_cell_images(where, "scan")
    return frame, np.asarray(kept.clean[...]), np.asarray(kept.edited[...]), kept.cells


def _assert_same(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    for x, y in zip(a[1:3], b[1:3], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[3] == b[3]


def _hidden(path):
    """Hidden (staged or old) entries next to the tables and next to the store."""
    folder = path / "attribution"
    tables = [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []
    beside = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}") and
              not p.name.endswith(".lock")]
    return tables + beside


def _fail_after_first_column(monkeypatch):
    real, calls = store_module._write_column, []

    def failing(group, name, values, attrs):
        calls.append(name)
        if len(calls) > 1:
            raise Injected(28, "No space left on device (injected)")
        real(group, name, values, attrs)

    monkeypatch.setattr(store_module, "_write_column", failing)
    return calls


def test_a_failure_in_the_middle_of_a_table_overwrite_keeps_the_old_table(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    _made(path)
    before = _snapshot(path)
    calls = _fail_after_first_column(monkeypatch)
    with pytest.raises(Injected):
        write_attribution(path, _new_frame(), name="scan", overwrite=True)
    assert len(calls) == 2  # the failure came after a column of the new table was written
    _assert_same(_snapshot(path), before)
    assert _hidden(path) == []  # the staged group was removed
    assert RunStore.open(path, mode="r").damage(decode=True) == []
    monkeypatch.undo()
    write_attribution(path, _new_frame(), name="scan", overwrite=True)
    after = _snapshot(path)
    pd.testing.assert_frame_equal(after[0], read_attribution(path, "scan"))
    assert len(after[0]) == 5 and (after[0]["effect"] == 7.0).all()
    assert float(after[1].max()) == 0.75 and len(after[3]) == len(_new_frame().attrs["images"].cells)
    assert RunStore.open(path, mode="r").damage(decode=True) == [] and _hidden(path) == []


def test_a_failing_images_write_keeps_the_old_table_and_its_images(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    _made(path)
    before = _snapshot(path)

    def failing(self, where, arrays, *, attrs):
        raise Injected(28, "No space left on device (injected)")

    monkeypatch.setattr(RunStore, "write_images", failing)
    with pytest.raises(Injected):
        write_attribution(path, _new_frame(), name="scan", overwrite=True)
    _assert_same(_snapshot(path), before)
    assert _hidden(path) == []


def test_values_that_cannot_be_converted_fail_before_the_store_is_touched(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    store = _made(path)
    before = _snapshot(path)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*"))

    class Unconvertible:
        def __array__(self, dtype=None, copy=None):
            raise ValueError("this column cannot become an array")

    columns = {"a": (np.arange(3), {}), "b": (Unconvertible(), {})}
    with pytest.raises(ValueError, match="cannot become an array"):
        store.write_table(attribution_path("scan"), columns, attrs={}, overwrite=True)
    frame = _new_frame()
    frame.attrs["images"] = CellImages(cells=frame.attrs["images"].cells, clean=np.zeros((2, 3, 4, 4)),
                                       edited=np.zeros((len(frame.attrs["images"].cells), 2, 3, 4, 4)))
    bad = frame.assign(feature=1.5)  # not a valid table: refused by validate, before anything
    with pytest.raises(ValueError, match="feature"):
        write_attribution(path, bad, name="scan", overwrite=True)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == files
    _assert_same(_snapshot(path), before)


def test_an_in_memory_store_keeps_its_old_table_too(monkeypatch):
    store = _made(None)
    before = _snapshot(store)
    _fail_after_first_column(monkeypatch)
    with pytest.raises(Injected):
        write_attribution(store, _new_frame(), name="scan", overwrite=True)
    _assert_same(_snapshot(store), before)
    assert store.attribution_tables() == ["scan"]
    monkeypatch.undo()
    write_attribution(store, _new_frame(), name="scan", overwrite=True)
    assert len(read_attribution(store, "scan")) == 5 and store.attribution_tables() == ["scan"]


def test_a_stale_staged_group_from_a_crash_is_ignored_and_cleaned(tmp_path):
    path = tmp_path / "run.zarr"
    store = _made(path)
    before = _snapshot(path)
    # what a kill in the middle of a replacement leaves: a half-written hidden group (an array, no chunks)
    half = store.group.create_group("attribution/.scan.new")
    half.create_array("feature", shape=(40,), dtype="int32", compressors=store_module.COMPRESSORS)
    store.finalize()  # even a consolidation that saw it (the jobs' merge, say) does not make it a table
    assert table.attribution_names(path) == ["scan"]
    _assert_same(_snapshot(path), before)
    assert open_run(path).store.damage(decode=True) == []  # readers do not call it damage
    from denoisefeat.viz.report import _load_attribution  # the report's (and the viewer's) reading of the tables

    notes = []
    assert set(_load_attribution(open_run(path), notes)["table"]) == {"scan"} and notes == []
    write_attribution(path, _new_frame(), name="other")  # a write of another table leaves it
    assert (path / "attribution" / ".scan.new").exists()
    write_attribution(path, _new_frame(), name="scan", overwrite=True)
    assert _hidden(path) == [] and table.attribution_names(path) == ["other", "scan"]
    assert RunStore.open(path, mode="r").damage(decode=True) == []


def test_without_an_atomic_exchange_the_two_renames_are_undone_after_a_crash_between_them(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    _made(path)
    monkeypatch.setattr(store_module, "_exchange", lambda a, b: False)  # a file system without renameat2
    write_attribution(path, _new_frame(), name="scan", overwrite=True)
    assert len(read_attribution(path, "scan")) == 5 and _hidden(path) == []
    # a crash between the two renames: the old table waits at .scan.old, nothing at scan
    write_attribution(path, _old_frame(), name="scan", overwrite=True)
    os.rename(path / "attribution" / "scan", path / "attribution" / ".scan.old")
    write_attribution(path, _new_frame(), name="other")
    assert table.attribution_names(path) == ["other"]
    write_attribution(path, _new_frame(), name="scan", overwrite=True)  # puts the old one back, then replaces it
    assert len(read_attribution(path, "scan")) == 5 and _hidden(path) == []
    os.rename(path / "attribution" / "scan", path / "attribution" / ".scan.old")
    _fail_after_first_column(monkeypatch)
    with pytest.raises(Injected):  # a failed write puts the old table back too
        write_attribution(path, _old_frame(), name="scan", overwrite=True)
    assert len(read_attribution(path, "scan")) == 5 and _hidden(path) == []


_KILLED = """
import sys, time
import numpy as np
from denoisefeat import store

real = store._write_column
def slow(*args):
    real(*args)
    print("column", flush=True)
    time.sleep(30)
store._write_column = slow
columns = {name: (np.arange(5), {"kind": "numeric"}) for name in ("effect", "p")}
store.RunStore.open(sys.argv[1]).write_table(store.attribution_path("scan"), columns, attrs={}, overwrite=True)
"""


def test_a_writer_killed_in_the_middle_leaves_the_old_table(tmp_path):
    path = tmp_path / "run.zarr"
    _made(path)
    before = _snapshot(path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED), str(path)], cwd=root,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root})
    assert child.stdout.readline().strip() == b"column"  # a column of the new table is on disk
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (path / "attribution" / ".scan.new").exists()
    _assert_same(_snapshot(path), before)
    assert open_run(path).store.damage(decode=True) == []
    write_attribution(path, _new_frame(), name="scan", overwrite=True)
    assert len(read_attribution(path, "scan")) == 5 and _hidden(path) == []


def test_replacement_keeps_the_old_store_until_the_block_ends(tmp_path):
    path = tmp_path / "run.zarr"
    _made(path)
    before = _snapshot(path)
    with pytest.raises(Injected), replacement(path, overwrite=True) as target:
        assert target == tmp_path / ".run.zarr.new"
        RunStore.create(target, run_attrs={"model": "y"}, n_samples=1, n_steps=1, chunk_samples=1)
        raise Injected("killed in the middle")
    _assert_same(_snapshot(path), before)
    assert _hidden(path) == []
    with replacement(path, overwrite=True) as target:
        RunStore.create(target, run_attrs={"model": "y"}, n_samples=1, n_steps=1, chunk_samples=1).finalize()
    assert open_run(path, allow_incomplete=True).attrs == {"model": "y"} and _hidden(path) == []
    with replacement(tmp_path / "fresh.zarr", overwrite=True) as target:  # nothing to replace: written in place
        assert target == tmp_path / "fresh.zarr"
    (tmp_path / "notes").mkdir()
    with pytest.raises(store_module.RunExistsError, match="not a denoisefeat store"), \
            replacement(tmp_path / "notes", overwrite=True):
        pass


def test_scan_overwrite_through_the_cli_keeps_the_old_store_on_an_error(tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "scan.zarr"
    args = ["attribute", "scan", "tiny-class-unet", "--out", str(out), "--layer", "mid_block", "--windows", "1",
            "--features", "color", "--keep-images", "1", "--samples", "2", "--steps", "2", "--seed", "3"]
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    before = (read_attribution(out, "ablation"), np.asarray(read_cell_images(out, "ablation").clean[...]),
              json.loads((out / "zarr.json").read_text()), open_run(out).attrs["seeds"])
    _fail_after_first_column(monkeypatch)
    failed = runner.invoke(app, [*args, "--seed", "4", "--overwrite"], env={"COLUMNS": "200"})
    assert failed.exit_code == 2, failed.output
    assert "No space left on device (injected)" in failed.output and "Traceback" not in failed.output
    assert [line for line in failed.output.splitlines() if "error" in line.lower()] == [
        "error: [Errno 28] No space left on device (injected)"]
    pd.testing.assert_frame_equal(read_attribution(out, "ablation"), before[0])
    np.testing.assert_array_equal(read_cell_images(out, "ablation").clean[...], before[1])
    assert json.loads((out / "zarr.json").read_text()) == before[2] and open_run(out).attrs["seeds"] == before[3]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    second = runner.invoke(app, [*args, "--seed", "4", "--overwrite"], env={"COLUMNS": "200"})
    assert second.exit_code == 0, second.output
    assert open_run(out).attrs["seeds"][:1] == [4]


def test_the_consolidated_copy_never_describes_the_old_table_after_the_swap(tmp_path):
    path = tmp_path / "run.zarr"
    _made(path)
    listed = lambda: json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]  # noqa: E731
    assert "attribution/scan/effect" in listed()
    new = make_frame().head(5).assign(effect=7.0, feature="other")  # another length, other categories
    columns = {c: (np.arange(5.0), {"kind": "numeric"}) for c in new.columns}
    RunStore.open(path).write_table(attribution_path("scan"), columns, attrs={"columns": list(columns), "n_rows": 5,
                                                                           "format": table.TABLE_FORMAT},
                                    overwrite=True)  # swapped in, not consolidated yet (write_attribution does it)
    assert not [name for name in listed() if name.startswith("attribution/scan")]
    back = read_attribution(path, "scan")  # a new reader reads the new table's own metadata
    assert len(back) == 5 and back["effect"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert RunStore.open(path, mode="r").damage(decode=True) == []
    RunStore.open(path).finalize()
    assert "attribution/scan/effect" in listed() and len(read_attribution(path, "scan")) == 5
