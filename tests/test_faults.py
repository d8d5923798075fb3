"""Faults and odd inputs a shared machine meets (issue 24): each is one `ulmfit: error:` line, status 2,
and leaves nothing behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_errors import one_error


def test_prefect_api_that_does_not_answer_is_one_line(tmp_path, capsys, data_dir):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    dead = "http://127.0.0.1:9/api"  # the discard port: nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path / "run")])
    assert dead in line and "does not answer" in line and "unset it" in line
    assert not (tmp_path / "run").exists()


def test_failed_download_leaves_no_folder_it_made(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ULMFIT_MIRROR", "http://127.0.0.1:9")  # no network here either way
    data = tmp_path / "nonexistent" / "data"
    line = one_error(capsys, ["run", "--preset", "smoke", "--set", f"data_dir={data}", "--out", str(tmp_path / "run")])
    assert "download of http://127.0.0.1:9/" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the data folders nor the run


def test_failed_download_keeps_folders_that_were_there(tmp_path, monkeypatch):
    from pipeline.data import load_corpus
    from pipeline.errors import DataError

    monkeypatch.setenv("ULMFIT_MIRROR", "http://127.0.0.1:9")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError):
        load_corpus("imdb", "train", data_dir=tmp_path / "data" / "new")
    assert (tmp_path / "data").is_dir() and not (tmp_path / "data" / "new").exists()


def test_predict_on_an_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    line = one_error(capsys, ["predict", "--run", str(tmp_path / "no-run"), "--file", str(empty)])
    assert "empty, no texts to classify" in line and str(empty) in line


def test_predict_on_a_numeric_column(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("review,stars\ngreat film,5\nawful,1\n")
    line = one_error(capsys, ["predict", "--run", str(tmp_path / "no-run"), "--file", str(table),
                              "--text-col", "stars"])
    assert "every text is a number" in line and "'5'" in line


@pytest.mark.parametrize("command", [["run", "--preset", "smoke"], ["compare", "--preset", "smoke"]])
def test_empty_out_is_refused(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, [*command, "--out", ""])
    assert "--out ''" in line
    assert list(tmp_path.iterdir()) == []  # not ./runs/smoke


def test_compare_runs_a_repeated_label_budget_once(tmp_path, data_dir):
    from pipeline.compare import grid

    twice = grid("smoke", ["awd_lstm", "awd_lstm"], ["full", "full"], [100, 100, 60], [], tmp_path)
    once = grid("smoke", ["awd_lstm"], ["full"], [100, 60], [], tmp_path)
    assert [(c.backbone, c.variant, c.n_labels) for c in twice] == [("awd_lstm", "full", 100), ("awd_lstm", "full", 60)]
    assert [c.folders for c in twice] == [c.folders for c in once]


def test_same_upstream_model_gives_the_same_downstream_key(tmp_path):
    """Two runs of the same work differ only in timings (metrics.json, card.md): their downstream
    stages share one key, so the store keeps one chain and a bit-identical recompute retrains nothing."""
    from pipeline.artifacts import write_manifest
    from pipeline.config import load_config
    from pipeline.store import stage_key

    def stage_folder(name: str, weights: bytes, seconds: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt").write_bytes(weights)
        (folder / "metrics.json").write_text(f'{{"train_seconds": {seconds}}}')
        (folder / "card.md").write_text(f"trained in {seconds} s")
        write_manifest(folder)
        return folder

    cfg = load_config("smoke")
    first, second = stage_folder("a", b"weights", 1.0), stage_folder("b", b"weights", 2.5)
    assert stage_key("adapt", cfg, first) == stage_key("adapt", cfg, second)
    other = stage_folder("c", b"other weights", 1.0)
    assert stage_key("adapt", cfg, first) != stage_key("adapt", cfg, other)
