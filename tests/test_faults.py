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
    from pipeline.data.corpora import load_corpus
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
    from pipeline.study.compare import grid

    twice = grid("smoke", ["awd_lstm", "awd_lstm"], ["full", "full"], [100, 100, 60], [], tmp_path)
    once = grid("smoke", ["awd_lstm"], ["full"], [100, 60], [], tmp_path)
    assert [(c.backbone, c.variant, c.n_labels) for c in twice] == [("awd_lstm", "full", 100), ("awd_lstm", "full", 60)]
    assert [c.folders for c in twice] == [c.folders for c in once]


def test_same_upstream_model_gives_the_same_downstream_key(tmp_path):
    """Two runs of the same work differ only in timings (metrics.json, card.md): their downstream
    stages share one key, so the store keeps one chain and a bit-identical recompute retrains nothing."""
    from pipeline.artifacts.stage_folder import write_manifest
    from pipeline.artifacts.store import stage_key
    from pipeline.config import load_config

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


_SAME_KEY_RUN = """
import logging, sys, time
from pathlib import Path
import flows.ulmfit_flow as flow
from pipeline.artifacts.stage_folder import write_manifest
from pipeline.config import load_config
from pipeline.stages.context import StageResult

def fake_launch(stage, cfg, upstream, out_dir, key):
    with open(sys.argv[3], "a") as fh:
        fh.write(out_dir + "\\n")
    time.sleep(2)  # long enough for the other process to arrive while this one computes
    folder = Path(out_dir)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "metrics.json").write_text("{}")
    write_manifest(folder, key)
    return StageResult(stage, out_dir, {})

logging.basicConfig(level=logging.INFO)
flow.launch = fake_launch
cfg = load_config("smoke", [f"cache_dir={sys.argv[1]}"])
flow.stage_task.fn("pretrain", cfg, sys.argv[2], None, "pretrain-samekey")
"""


def test_two_runs_of_the_same_work_compute_it_once(tmp_path):
    """Defect 4: two runs of one stage key on one store: the second waits for the first, then takes its
    stage from the store instead of training it again."""
    import subprocess
    import sys

    from pipeline.artifacts.stage_folder import is_complete

    script, computed = tmp_path / "run.py", tmp_path / "computed.txt"
    script.write_text(_SAME_KEY_RUN)
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(tmp_path / name / "pretrain"),
                              str(computed)], stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
            for name in ("a", "b")]
    logs = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert len(computed.read_text().splitlines()) == 1, logs
    assert sum("is computing this stage with the same settings; waiting" in log for log in logs) == 1, logs
    assert all(is_complete(tmp_path / name / "pretrain", "pretrain-samekey") for name in ("a", "b"))


def test_a_damaged_store_entry_is_reported_with_the_folders_sharing_it(tmp_path, caplog):
    """Defect 5: a store entry whose model.pt changed is not used, and the warning names the run
    folders that share the damaged file through their hard links."""
    from pipeline.artifacts.stage_folder import write_manifest
    from pipeline.artifacts.store import keep, restore, store_entry
    from pipeline.config import load_config

    cfg, key = load_config("smoke", [f"cache_dir={tmp_path / 'cache'}"]), "adapt-damaged"
    first = tmp_path / "run1" / "adapt"
    first.mkdir(parents=True)
    (first / "model.pt").write_bytes(b"weights" * 100)
    write_manifest(first, key)
    keep(first, key, cfg)
    second = tmp_path / "run2" / "adapt"
    assert restore(second, key, cfg)  # linked in from the store
    model = store_entry(cfg, key) / "model.pt"
    model.write_bytes(b"flipped" + model.read_bytes()[7:])  # in place: every hard link sees it

    caplog.set_level("WARNING", logger="ulmfit")
    assert not restore(tmp_path / "run3" / "adapt", key, cfg)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"{model}: damaged (sha256 does not match manifest.json), so not used" in warning
    assert str(first) in warning and str(second) in warning
    caplog.clear()
    assert not restore(first, key, cfg)  # a run folder sharing the file: one line, not one per copy
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 1
