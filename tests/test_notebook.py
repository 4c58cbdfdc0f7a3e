"""The notebook in examples/ runs from top to bottom in a Jupyter kernel, and its outputs are stripped in the repository."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "examples" / "your_own_model.ipynb"


def test_the_notebook_walks_a_users_model_through_the_api(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in notebook.cells
               if cell.cell_type == "code"), "strip the notebook's outputs before committing it"
    monkeypatch.setenv("MICROSCOPE_NOTEBOOK_STEPS", "8")
    monkeypatch.setenv("MICROSCOPE_NOTEBOOK_IMAGES", "24")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {index: cell.outputs for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert not [o for cell in outputs.values() for o in cell if o.output_type == "error"]
    shown = [o for cell in outputs.values() for o in cell if o.output_type == "execute_result"]
    assert any("image/png" in o.data for o in shown)  # the render, as a picture
    unit = next(o for o in shown if "text/html" in o.data and "mnist / 7 / 1" in o.data["text/html"])
    assert unit.data["text/html"].count("<img") >= 2  # its picture and its examples
    assert "(['mnist'], ['0', '3', '7'])" in str([o.data.get("text/plain") for o in shown])
