"""`ulmfit compare` on the smoke preset: the grid with seeds, the TF-IDF row and probes, its table and plot,
cell-level caching, and the results file it rewrites."""
import pandas as pd
import pytest

from pipeline.artifacts.stage_folder import read_metrics
from tests.test_flow import ulmfit_here as ulmfit  # in this process; the real command: test_flow.first_run

CELL_LINE = r"^\s+(\S+/\S+/seed\d+)\s+pretrain=(\w+) adapt=(\w+) classify=(\w+)"


def cell_states(proc) -> dict:
    import re

    return {m[0]: m[1:] for m in re.findall(CELL_LINE, proc.stdout, re.M)}


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, data_dir, module_cache_dir, smoke_stages):
    smoke_stages(module_cache_dir)  # the awd_lstm/full/seed42 cell is the plain smoke run: from the store
    return tmp_path_factory.mktemp("compare") / "out"


@pytest.mark.slow
def test_compare_with_seeds_baseline_and_probe(compare_dir, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nA reading that stays.\n")
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "awd_lstm", "--seeds", "2", "--out", str(compare_dir),
                  "--results", str(results))
    assert proc.returncode == 0, proc.output[-3000:]
    states = cell_states(proc)
    variants = ("full", "no_pretrain", "no_adapt")
    assert set(states) == {f"awd_lstm/{v}/seed{s}" for v in variants for s in (42, 43)}, proc.stdout[-3000:]
    assert states["awd_lstm/no_adapt/seed42"][0] == "Cached", proc.output[-4000:]  # shares the full cell's pretraining
    for v in variants:  # the second seed retrains only the classifier
        assert states[f"awd_lstm/{v}/seed43"] == ("Cached", "Cached", "Completed"), states

    report = compare_dir / "report"
    cells = pd.read_csv(report / "cells.csv")
    assert len(cells) == 6 and set(cells["seed"]) == {42, 43}
    assert cells["test_accuracy"].between(0, 1).all() and cells["probe_test_accuracy"].between(0, 1).all()
    assert cells.groupby("seed")["tfidf_test_accuracy"].nunique().eq(1).all()  # one labeled sample per seed
    assert cells["test_size"].nunique() == 1  # every seed is tested on the same reviews
    table = pd.read_csv(report / "compare.csv").set_index("backbone")
    runs = table.loc["awd_lstm"].set_index("variant")
    assert list(runs.index) == list(variants) and (runs["seeds"] == 2).all()
    assert runs["test_accuracy_sd"].ge(0).all() and runs["probe_test_accuracy_mean"].between(0, 1).all()
    lm_tokens = runs["lm_tokens"]  # full = stage 1 + stage 2; each ablation drops one of them
    assert lm_tokens["full"] == pytest.approx(lm_tokens["no_pretrain"] + lm_tokens["no_adapt"]) and lm_tokens.gt(0).all()
    assert runs.loc["no_pretrain", "pretrain_perplexity"] > runs.loc["full", "pretrain_perplexity"]
    pflops = runs["lm_pflops"]  # the LM compute, counted per token on the architecture (pipeline/training/flops.py)
    assert pflops["full"] == pytest.approx(pflops["no_pretrain"] + pflops["no_adapt"]) and pflops.gt(0).all()
    counted = sum(read_metrics(compare_dir / "awd_lstm" / stage)["train_flops"] for stage in ("pretrain", "adapt"))
    assert pflops["full"] == pytest.approx(counted / 1e15)
    baseline = table.loc["tfidf+lr"]
    assert baseline["seeds"] == 2 and 0 <= baseline["test_accuracy_mean"] <= 1
    assert (report / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "compare.md").read_text()
    assert "| awd_lstm | full | 60 | 2 |" in markdown and "| tfidf+lr | - | 60 | 2 |" in markdown

    text = results.read_text()
    assert text.startswith("# Results\n\nA reading that stays.") and "| tfidf+lr | - | 60 | 2 |" in text
    assert "--seeds 2" in text and (tmp_path / "docs" / "out.png").exists()


@pytest.mark.slow
def test_adding_a_backbone_computes_only_its_cells(compare_dir):
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "awd_lstm,gpt", "--variants", "full,no_adapt",
                  "--seeds", "2", "--out", str(compare_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    states = cell_states(proc)
    assert states["awd_lstm/full/seed43"] == ("Cached", "Cached", "Cached")
    assert states["gpt/full/seed42"] == ("Completed", "Completed", "Completed")
    assert states["gpt/full/seed43"] == ("Cached", "Cached", "Completed")
    table = pd.read_csv(compare_dir / "report" / "compare.csv")
    assert set(table["backbone"]) == {"awd_lstm", "gpt", "tfidf+lr"} and len(table) == 5


def test_compare_rejects_unknown_names(tmp_path):
    proc = ulmfit("compare", "--preset", "smoke", "--backbones", "lstm9000", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "lstm9000" in proc.stderr
    proc = ulmfit("compare", "--preset", "smoke", "--variants", "half", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "half" in proc.stderr


@pytest.mark.slow  # reads what test_compare_with_seeds_baseline_and_probe (slow) wrote
def test_compare_notebook_reads_the_real_report(compare_dir, monkeypatch):
    """4_compare.ipynb on what `ulmfit compare` wrote (tests/test_notebooks.py runs it on a plain run)."""
    from tests.test_notebooks import execute, outputs_text

    book = execute("4_compare.ipynb", compare_dir, monkeypatch)
    assert not [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = outputs_text(book)
    assert "not a compare run" not in text and "image/png" in text
    for value in ("awd_lstm", "gpt", "no_adapt", "test_accuracy"):  # the report's table, shown as read
        assert value in text
