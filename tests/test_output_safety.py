"""Never a user's file lost (issue 11): ulmfit replaces only folders it wrote itself.

`atomic_dir` used to rename any existing stage folder aside and delete it, so
`mkdir -p P/classify; echo notes > P/classify/notes.txt; ulmfit run --out P` deleted notes.txt.
Now a folder is replaced only when its manifest lists every file in it; anything else is refused
with one line naming it, before any stage starts.
"""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from flows.cli import main
from pipeline.artifacts.model_file import ModelFile
from pipeline.artifacts.stage_folder import atomic_dir, foreign_content, write_stage
from pipeline.errors import ArtifactError
from pipeline.study.report import write_report
from pipeline.training.checkpoint import Checkpointer
from tests.cli_errors import one_error


def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _stage(folder):
    model = ModelFile(kind="lm", stage="pretrain", backbone="awd_lstm", arch={}, config={},
                      state_dict={"w": torch.zeros(3)}, vocab=["a"], tokenizer={})
    return write_stage(folder, model=model, metrics={"x": 1.0}, history=pd.DataFrame({"epoch": [0]}),
                       card="# card\n", cache_key="k")


# --- atomic_dir ------------------------------------------------------------------------------------

def test_a_users_folder_is_never_replaced(tmp_path):
    (tmp_path / "classify").mkdir()
    (tmp_path / "classify" / "notes.txt").write_text("notes")
    with pytest.raises(ArtifactError) as err:
        with atomic_dir(tmp_path / "classify"):
            pytest.fail("the body must not run: the refusal comes before any work")
    assert "classify" in str(err.value) and "not replacing it" in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "classify" / "notes.txt").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classify"]


def test_a_file_dropped_into_a_stage_folder_is_never_deleted(tmp_path):
    folder = _stage(tmp_path / "pretrain")
    (folder / "my-notes.md").write_text("mine")
    assert "my-notes.md" in foreign_content(folder)
    with pytest.raises(ArtifactError, match="holds files ulmfit did not write \\(my-notes.md\\)"):
        _stage(folder)
    assert (folder / "my-notes.md").read_text() == "mine"


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_a_file_or_link_where_a_stage_folder_goes_is_never_replaced(tmp_path, what):
    target = tmp_path / "adapt"
    if what == "file":
        target.write_text("a file of the user's")
    else:
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArtifactError, match="not a folder ulmfit wrote"):
        _stage(target)
    assert target.is_symlink() if what == "symlink" else target.read_text() == "a file of the user's"


def test_own_stage_folders_are_still_replaced(tmp_path):
    folder = _stage(tmp_path / "pretrain")
    (folder / "model.pt").unlink()  # incomplete, corrupted: still ours (listed in the manifest)
    _stage(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["card.md", "history.csv", "manifest.json", "metrics.json",
                                                       "model.pt"]


def test_a_users_checkpoint_named_folder_is_never_touched(tmp_path):
    (tmp_path / "classify.partial").mkdir()
    (tmp_path / "classify.partial" / "draft.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="classify.partial"):
        Checkpointer(tmp_path / "classify.partial", "key")
    assert (tmp_path / "classify.partial" / "draft.txt").read_text() == "mine"


def test_compare_report_replaces_its_own_folder_only(tmp_path):
    numbers = ("test_accuracy", "probe_test_accuracy", "tfidf_test_accuracy", "params", "lm_tokens", "lm_pflops",
               "pretrain_perplexity", "adapt_perplexity", "lm_seconds", "classify_seconds")
    rows = [{**{c: 1.0 for c in numbers}, "backbone": "awd_lstm", "variant": "full", "n_labels": 60, "seed": 1,
             "test_size": 60, "objective": "causal"}]
    report = write_report(tmp_path, rows)
    assert json.loads((report / "manifest.json").read_text())["files"]
    write_report(tmp_path, rows)  # its own: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report").mkdir()
    (tmp_path / "mine" / "report" / "draft.md").write_text("mine")
    with pytest.raises(ArtifactError, match="report"):
        write_report(tmp_path / "mine", rows)
    assert (tmp_path / "mine" / "report" / "draft.md").read_text() == "mine"


def test_the_stage_store_follows_the_same_rule(tmp_path, caplog):
    """The stage store hard-links stage folders into run folders and into `<cache>/stages/<key>/`
    (through atomic_dir): a linked-in stage is the tool's own to replace (the store's copy is unaffected),
    and neither a store entry nor a run folder holding a user's file is ever replaced."""
    from pipeline.artifacts.stage_folder import is_complete
    from pipeline.artifacts.store import keep, restore, store_entry
    from pipeline.config import load_config

    cfg = load_config("smoke", [f"cache_dir={tmp_path / 'cache'}"])
    first = _stage(tmp_path / "X" / "pretrain")
    keep(first, "k", cfg)
    entry = store_entry(cfg, "k")
    assert is_complete(entry, "k") and (entry / "model.pt").stat().st_ino == (first / "model.pt").stat().st_ino
    linked = tmp_path / "Y" / "pretrain"
    assert restore(linked, "k", cfg) and foreign_content(linked) is None
    _stage(linked)  # the tool's own folder (hard links): replaced, and the store's files are untouched
    assert is_complete(entry, "k") and (entry / "model.pt").stat().st_ino == (first / "model.pt").stat().st_ino
    (entry / "notes.txt").write_text("mine")
    with caplog.at_level("WARNING", logger="ulmfit"):
        keep(first, "k", cfg)
    assert "not replacing it" in caplog.text and (entry / "notes.txt").read_text() == "mine"
    users = tmp_path / "Z" / "pretrain"
    users.mkdir(parents=True)
    (users / "draft.txt").write_text("mine")
    assert not restore(users, "k", cfg)
    assert files_under(users) == {"draft.txt": b"mine"}


# --- through the command line: refused before anything runs or is written -------------------------

def test_cli_refuses_a_users_stage_named_folder(tmp_path, capsys, data_dir):
    """The issue's case: `mkdir -p P/classify; echo notes > P/classify/notes.txt; ulmfit run --out P`."""
    (tmp_path / "P" / "classify").mkdir(parents=True)
    (tmp_path / "P" / "classify" / "notes.txt").write_text("notes\n")
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path / "P")])
    assert str(tmp_path / "P" / "classify") in line and "not replacing it" in line
    assert files_under(tmp_path / "P") == {"classify/notes.txt": b"notes\n"}  # nothing written, nothing lost


def test_cli_out_home_never_touches_the_users_files(tmp_path, monkeypatch, capsys, data_dir):
    """`--out ~` with a home folder that has its own `.lock` and a `pretrain` folder."""
    home = tmp_path / "home"
    (home / "pretrain").mkdir(parents=True)
    (home / "pretrain" / "thesis.tex").write_text("chapter 1")
    (home / ".lock").write_text("some other program's lock")
    before = files_under(home)
    monkeypatch.setenv("HOME", str(home))
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", "~"])
    assert "pretrain" in line or ".lock" in line, line
    assert files_under(home) == before


def test_cli_out_dot_keeps_every_file_it_did_not_write(tmp_path, monkeypatch, capsys, data_dir, module_cache_dir,
                                                      smoke_stages):
    """A whole smoke run with `--out .` in a folder of the user's: it adds its stage folders (from the store) and
    its lock, and every file that was there is still there, unchanged; a rerun of classify computes it there."""
    smoke_stages(module_cache_dir)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "reviews.csv").write_text("text,label\n")
    (work / "notes.txt").write_text("notes")
    (work / "pretrain.txt").write_text("not a stage folder")
    before = files_under(work)
    monkeypatch.chdir(work)
    assert main(["run", "--preset", "smoke", "--out", "."]) == 0
    after = files_under(work)
    assert {k: after[k] for k in before} == before
    assert {p.name for p in work.iterdir()} == {"data", "notes.txt", "pretrain.txt", "pretrain", "adapt", "classify",
                                                ".lock"}
    assert main(["run", "--preset", "smoke", "--out", ".", "--rerun", "classify"]) == 0  # its own: replaced
    assert {k: files_under(work)[k] for k in before} == before


def test_cli_read_only_out_is_one_error(mount_tmpfs, monkeypatch, capsys):
    folder, real = mount_tmpfs("read-only", "ro")
    if not real:  # not allowed to mount: a folder without write permission (honoured for non-root users)
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):  # root without mount rights: no way to make a folder read-only
            import pipeline.validate

            monkeypatch.setattr(pipeline.validate, "_writable", lambda path: path != folder)
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(folder / "run")])
    assert str(folder) in line and "not writable" in line
    folder.chmod(0o755) if not real else None
