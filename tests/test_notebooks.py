"""Every notebook runs top to bottom against a real smoke run, and is committed without outputs."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STAGE_NOTEBOOKS = ["1_pretrain.ipynb", "2_adapt.ipynb", "3_classify.ipynb", "4_compare.ipynb"]


def execute(name: str, run_dir: Path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ULMFIT_RUN_DIR", str(run_dir))  # the kernel inherits it; the parameters cell reads it
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend puts plots in the outputs
    book = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()  # raises on a cell error
    return book


def outputs_text(book) -> str:
    parts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + json.dumps(out.get("data", {})))
    return "\n".join(parts)


def test_all_notebooks_are_listed():
    assert [p.name for p in NOTEBOOKS] == STAGE_NOTEBOOKS


@pytest.mark.parametrize("name", STAGE_NOTEBOOKS)
def test_notebook_runs_on_a_smoke_run(name, smoke_run, monkeypatch):
    book = execute(name, smoke_run, monkeypatch)
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "image/png" in outputs_text(book) or name == "4_compare.ipynb"  # plots rendered
    if name == "4_compare.ipynb":
        assert "this is not a compare run" in outputs_text(book)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_clean(path):
    book = json.loads(path.read_text())
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: clear outputs before committing"
    params = [c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "ULMFIT_RUN_DIR" in "".join(params[0]["source"])
