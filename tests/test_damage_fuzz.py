"""Damage fuzz (issue 15): random deletion, truncation and byte flips of random chunk and metadata
files of a small complete store.  Every command either refuses with one line (exit 2) or prints
exactly what it prints on the undamaged store: never a traceback, never a silent NaN."""

import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from denoisefeat.cli import app

runner = CliRunner()
BUDGET_S = float(os.environ.get("DENOISEFEAT_FUZZ_SECONDS", "45"))

COMMANDS = {
    "info": lambda s: ["info", s],
    "analyze": lambda s: ["analyze", s, "--metrics", "edge_density,colorfulness"],
    "probe": lambda s: ["probe", s, "--targets", "labels", "--cv", "2", "--n-boot", "20", "--overwrite"],
    "stats": lambda s: ["attribute", "stats", s, "--overwrite"],
    "report": lambda s: ["report", s, "-o", str(Path(s).parent / "r.html")],
}


def _normal(output: str, store: str) -> str:
    text = output.replace(store, "STORE")
    return re.sub(r"\(\d+\.\d MB\)", "(n MB)", text)  # the report's size line


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from denoisefeat.models import load_pipeline
    from denoisefeat.step_features import features
    from denoisefeat.trajectory import trace

    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "base.zarr"
    pipe = load_pipeline("tiny-class-unet")
    trace(pipe, class_labels=[0, 1, 0, 1], steps=3, batch_size=2, store=path, record={"mid_block": "channel_mean"},
          model_id="tiny-class-unet")
    features(path, metrics=["edge_density", "colorfulness"])
    return path


def _damage(store: Path, rng: random.Random) -> str:
    files = sorted(p for p in store.rglob("*") if p.is_file())
    target = rng.choice(files)
    data = target.read_bytes()
    kind = rng.choice(["delete", "truncate", "flip"])
    if kind == "delete":
        target.unlink()
    elif kind == "truncate":
        target.write_bytes(data[: rng.randrange(len(data))] if data else b"")
    else:
        if not data:
            return f"nothing to flip in {target.relative_to(store)}"
        i = rng.randrange(len(data))
        target.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    return f"{kind} {target.relative_to(store)}"


def test_damaged_stores_refuse_or_match_the_undamaged_results(base, tmp_path):
    reference = {}
    for name, args in COMMANDS.items():
        copy = tmp_path / "case" / "S.zarr"  # one path for every case: rich wraps long titles by length
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(base, copy)
        result = runner.invoke(app, args(str(copy)))
        assert result.exit_code == 0, (name, result.output)
        reference[name] = _normal(result.output, str(copy))
    rng = random.Random(int(os.environ.get("DENOISEFEAT_FUZZ_SEED", "15")))
    deadline, cases = time.monotonic() + BUDGET_S, 0
    while time.monotonic() < deadline or cases < 10:
        case = tmp_path / "case"
        shutil.rmtree(case, ignore_errors=True)
        store = case / "S.zarr"
        shutil.copytree(base, store)
        what = _damage(store, rng)
        name = rng.choice(list(COMMANDS))
        result = runner.invoke(app, COMMANDS[name](str(store)))
        context = f"{name} after {what}:\n{result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), context
        if result.exit_code == 0:
            got, want = _normal(result.output, str(store)), reference[name]
            if name == "info" and what.startswith("delete complete/"):
                # a lost completion marker reads "not done" (never data): info says fewer samples are
                # complete, every reader refuses them, and --resume recomputes them
                got, want = (re.sub(r"\d+ \(\d+ complete\)", "N", text) for text in (got, want))
            assert got == want, context
        else:
            assert result.exit_code == 2, context
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert sum(line.startswith("error:") for line in lines) == 1, context
        shutil.rmtree(case)
        cases += 1
