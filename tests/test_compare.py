"""`ulmfit compare` on the smoke preset: the grid, its table and plot, and cell-level caching."""
import pandas as pd
import pytest

from tests.test_flow import ulmfit

CELL_LINE = r"^\s+(\S+/\S+)\s+pretrain=(\w+) adapt=(\w+) classify=(\w+)"


def cell_states(proc) -> dict:
    import re

    return {m[0]: m[1:] for m in re.findall(CELL_LINE, proc.stdout, re.M)}


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, data_dir):
    return tmp_path_factory.mktemp("compare") / "out"


def test_compare_writes_table_and_plot(compare_dir):
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "awd_lstm", "--out", str(compare_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    states = cell_states(proc)
    assert set(states) == {"awd_lstm/full", "awd_lstm/no_pretrain", "awd_lstm/no_adapt"}, proc.stdout[-3000:]
    assert states["awd_lstm/no_adapt"][0] == "Cached", proc.output[-4000:]  # shares the full cell's pretraining
    report = compare_dir / "report"
    table = pd.read_csv(report / "compare.csv")
    assert list(table["variant"]) == ["full", "no_pretrain", "no_adapt"]
    assert table["test_accuracy"].between(0, 1).all() and (table["params"] > 0).all()
    no_pre = table.set_index("variant").loc["no_pretrain"]
    assert no_pre["pretrain_perplexity"] > table.set_index("variant").loc["full", "pretrain_perplexity"]
    assert (report / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| awd_lstm | full |" in (report / "compare.md").read_text()


def test_adding_a_backbone_computes_only_its_cells(compare_dir):
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "awd_lstm,gpt", "--variants", "full,no_adapt",
                  "--out", str(compare_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    states = cell_states(proc)
    assert states["awd_lstm/full"] == ("Cached", "Cached", "Cached")
    assert states["gpt/full"] == ("Completed", "Completed", "Completed")
    table = pd.read_csv(compare_dir / "report" / "compare.csv")
    assert set(table["backbone"]) == {"awd_lstm", "gpt"} and len(table) == 4


def test_compare_rejects_unknown_names(tmp_path):
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "lstm9000", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "lstm9000" in proc.stderr
    proc = ulmfit("compare", "--preset", "smoke", "--variants", "half", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "half" in proc.stderr


def test_compare_notebook_reads_the_real_report(compare_dir, monkeypatch):
    """4_compare.ipynb on what `ulmfit compare` wrote (tests/test_notebooks.py runs it on a plain run)."""
    from tests.test_notebooks import execute, outputs_text

    book = execute("4_compare.ipynb", compare_dir, monkeypatch)
    assert not [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = outputs_text(book)
    assert "not a compare run" not in text and "image/png" in text
    for value in ("awd_lstm", "gpt", "no_adapt", "test_accuracy"):  # the report's table, shown as read
        assert value in text
