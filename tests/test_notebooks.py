"""The example notebooks: every .ipynb is its jupytext .py without outputs, and 01–04 run cleanly.

The notebooks are written as jupytext percent files (``notebooks/0N_*.py``) and paired with an
``.ipynb`` generated from them (``jupytext --to ipynb``).  These tests check that each pair is in
sync and stored without outputs, compile the GPU notebook (05, not executed here), and execute the
CPU notebooks 01–04 on the toy model and 06 on ``tiny-sd`` in a fresh kernel.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CPU_NOTEBOOKS = ["01_probe_a_layer", "02_frequency_evolution", "03_attribution", "04_compare_configurations",
                 "06_prompt_contrast"]
GPU_NOTEBOOKS = ["05_stable_diffusion_gpu"]


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


@pytest.mark.parametrize("name", CPU_NOTEBOOKS + GPU_NOTEBOOKS)
def test_pair_in_sync_and_without_outputs(name):
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(ipynb)
    for index, cell in enumerate(ipynb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {index} has stored outputs; strip them"
            assert cell.execution_count is None, f"{name}.ipynb cell {index} has an execution count"
    assert ipynb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert _cells(ipynb) == _cells(source), (
        f"{name}.ipynb and {name}.py differ: regenerate with `jupytext --to ipynb notebooks/{name}.py`"
    )


@pytest.mark.parametrize("name", GPU_NOTEBOOKS)
def test_gpu_notebook_compiles(name):
    path = NOTEBOOKS / f"{name}.py"
    compile(path.read_text(encoding="utf-8"), str(path), "exec")  # no .pyc written into the repo


@pytest.fixture(scope="module")
def kernel_name():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")  # ipykernel in this environment provides it
    except NoSuchKernel as error:
        pytest.skip(f"no 'python3' Jupyter kernel can be started here (install ipykernel): {error}")
    return "python3"


@pytest.fixture(scope="module")
def toy_weights():
    from denoisefeat.models import TOY_WEIGHTS

    if not (TOY_WEIGHTS / "model_index.json").is_file():
        pytest.skip(f"the toy model the notebooks use is not in {TOY_WEIGHTS} (no model_index.json)")


@pytest.mark.parametrize("name", CPU_NOTEBOOKS)
def test_notebook_runs(name, kernel_name, toy_weights, tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert not any(tmp_path.iterdir()), "the notebook wrote into its working directory"
