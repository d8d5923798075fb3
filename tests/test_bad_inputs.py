"""The bad-input catalog, through the `ulmfit` command line (in-process): each case exits 2 with
one `ulmfit: error:` line that says what is wrong, and writes nothing into the run directory."""
from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import main
from pipeline.artifacts import stage_folder
from pipeline.data.corpora import MAX_DOC_CHARS
from tests.cli_errors import one_error

GOOD_ROWS = "".join(f"review number {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n" for i in range(40))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir, module_cache_dir, smoke_stages):
    """A finished smoke run (its stages from the session's store); every case below runs against it and must
    leave it as it was."""
    path = tmp_path_factory.mktemp("bad-inputs") / "run"
    smoke_stages(module_cache_dir)
    assert main(["run", "--preset", "smoke", "--out", str(path)]) == 0
    return path


def snapshot(run_dir):
    """Names of everything under the run directory, and the content of every manifest."""
    names = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    return names, {p.parent.name: p.read_bytes() for p in run_dir.glob("*/manifest.json")}


def labeled_csv(tmp_path, name, n_rows, header="text,label", extra="") -> str:
    rows = "".join(f"review number {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n"
                   for i in range(n_rows))
    return write(tmp_path, name, (header + chr(10) + rows + extra).encode())


def write(tmp_path, name, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


# case -> (build(tmp_path) -> extra CLI arguments, fragments the error line must contain)
CLASSIFY_FILE_CASES = {
    "empty-file": (lambda t: ["--set", f"classify.corpus={write(t, 'empty.csv', b'')}"], ["empty.csv", "empty corpus"]),
    "header-only": (lambda t: ["--set", f"classify.corpus={write(t, 'h.csv', b'text,label' + chr(10).encode())}"],
                    ["h.csv", "empty corpus"]),
    "wrong-columns": (lambda t: ["--set", f"classify.corpus={write(t, 'cols.csv', b'review,stars' + chr(10).encode() + b'good,5' + chr(10).encode())}"],
                      ["cols.csv", "no column 'text'", "['review', 'stars']"]),
    "missing-label-column": (lambda t: ["--set", f"classify.corpus={write(t, 'nolab.csv', b'text' + chr(10).encode() + b'good' + chr(10).encode())}"],
                             ["nolab.csv", "no column 'label'"]),
    "custom-column-missing": (lambda t: ["--set", f"classify.corpus={write(t, 'r.csv', ('text,label' + chr(10) + GOOD_ROWS).encode())}",
                                         "--set", "classify.text_col=body"], ["r.csv", "no column 'body'"]),
    "not-utf8": (lambda t: ["--set", f"classify.corpus={write(t, 'latin1.csv', ('text,label' + chr(10) + 'café,pos' + chr(10)).encode('latin-1'))}"],
                 ["latin1.csv", "line 2", "not UTF-8"]),
    "binary-file": (lambda t: ["--set", f"classify.corpus={write(t, 'image.csv', bytes(range(256)) * 8)}"],
                    ["image.csv", "binary"]),
    "gzip-file": (lambda t: ["--set", f"classify.corpus={write(t, 'packed.csv', gzip.compress(GOOD_ROWS.encode()))}"],
                  ["packed.csv", "binary"]),
    "enormous-document": (lambda t: ["--set", f"classify.corpus={write(t, 'huge.csv', ('text,label' + chr(10) + 'word ' * (MAX_DOC_CHARS // 5 + 1) + ',pos' + chr(10) + GOOD_ROWS).encode())}"],
                          ["huge.csv", "row 0", "over the limit of 5,000,000"]),
    "single-class": (lambda t: ["--set", f"classify.corpus={write(t, 'one.csv', ('text,label' + chr(10) + GOOD_ROWS.replace(',neg', ',pos')).encode())}"],
                     ["one.csv", "only one class", "'pos'"]),
    "test-labels-unseen": (lambda t: ["--set", f"classify.corpus={write(t, 'train.csv', ('text,label' + chr(10) + GOOD_ROWS).encode())}",
                                      "--set", f"classify.test_corpus={write(t, 'test.csv', ('text,label' + chr(10) + GOOD_ROWS.replace(',neg', ',meh')).encode())}"],
                           ["test.csv", "['meh']", "do not occur in the training data"]),
    "n-labels-too-many": (lambda t: ["--set", "classify.n_labels=30000"], ["classify.n_labels", "asked for 30000", "available"]),
    "missing-file": (lambda t: ["--set", f"classify.corpus={t / 'no_such.csv'}"], ["no_such.csv", "not found"]),
    # issue 11: tracebacks before, one line now
    "four-rows-n-valid-2": (lambda t: ["--set", f"classify.corpus={labeled_csv(t, 'four.csv', 4)}", "--set", "classify.n_valid=2",
                                       "--set", "classify.n_labels=null", "--set", "classify.n_test=null"],
                            ["four.csv", "too few to hold 20% out as the test set"]),  # was IndexError
    "ten-rows-n-valid-8": (lambda t: ["--set", f"classify.corpus={labeled_csv(t, 'ten.csv', 10)}", "--set", "classify.n_valid=8",
                                      "--set", "classify.n_labels=null", "--set", "classify.n_test=null"],
                           ["ten.csv", "0 rows are left for training"]),  # was AttributeError
    # issue 11: input read in ways the user did not mean
    "duplicate-columns": (lambda t: ["--set", f"classify.corpus={write(t, 'dup.csv', b'text,text,label' + chr(10).encode() + GOOD_ROWS.replace(',', ',x,').encode())}"],
                          ["dup.csv", "column 'text' appears 2 times"]),
    "na-label": (lambda t: ["--set", f"classify.corpus={labeled_csv(t, 'na.csv', 40, extra='one more,NA' + chr(10))}"],
                 ["na.csv", "row 40", "'NA' reads as a missing value", "classes found: 'neg' 20, 'pos' 20, 'NA' 1"]),
    "label-case-and-spaces": (lambda t: ["--set", f"classify.corpus={labeled_csv(t, 'case.csv', 40, extra='x,Neg' + chr(10) + 'y,pos ' + chr(10))}"],
                              ["case.csv", "'Neg' and 'neg' differ only in case or surrounding spaces",
                               "'neg' 20, 'pos' 20, 'Neg' 1, 'pos ' 1"]),
}


@pytest.mark.parametrize("case", CLASSIFY_FILE_CASES, ids=list(CLASSIFY_FILE_CASES))
def test_bad_classify_data(case, run_dir, tmp_path, capsys):
    build, fragments = CLASSIFY_FILE_CASES[case]
    before = snapshot(run_dir)
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(run_dir), *build(tmp_path)])
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["single-class", "ten-rows-n-valid-8"])
def test_bad_classify_data_stops_a_fresh_run_before_any_stage(case, tmp_path, capsys, data_dir):
    """A bad classify file used to be read only when stage 3 started: a fresh run trained stages 1-2
    first (~15 min on the cpu preset) and wrote their folders. Now nothing runs and nothing is written."""
    build, fragments = CLASSIFY_FILE_CASES[case]
    fresh = tmp_path / "fresh"
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(fresh), *build(tmp_path)])
    assert all(fragment in line for fragment in fragments), line
    assert not fresh.exists()


CONFIG_CASES = {
    "unknown-key": (["classify.n_lables=3"], ["classify.n_lables", "Extra inputs are not permitted"]),
    "unknown-section": (["clasify.lrs=[0.1]"], ["clasify"]),
    "wrong-type": (["classify.bs=\"many\""], ["classify.bs", "integer"]),
    "wrong-type-list": (["classify.lrs=0.01"], ["classify.lrs", "list"]),
    "negative-lr": (["pretrain.lr=-1"], ["pretrain.lr", "greater than 0"]),
    "negative-phase-lr": (["classify.lrs=[-0.1,0.01]"], ["learning rates > 0"]),
    "zero-batch": (["adapt.bs=0"], ["adapt.bs", "greater than 0"]),
    "not-key-value": (["classify.n_labels"], ["section.field=value"]),
    "leaf-as-section": (["seed.x=1"], ["seed"]),
    # issue 11
    "bool-for-int": (["classify.bs=true"], ["classify.bs", "valid integer"]),  # was read as batch size 1
    "infinite-lr": (["pretrain.lr=Infinity"], ["pretrain.lr", "finite"]),  # was rejected after the server started
    "overflowing-lrs": (["classify.lrs=[1e308,1e308]"], ["learning rates > 0 and <= 10"]),  # was a RuntimeError
    "drop-mult-breaks-dropout": (["model.drop_mult=5"], ["model.drop_mult=5.0", "within 0..1"]),  # was a RuntimeError
    "classify-drop-mult": (["classify.drop_mult=3"], ["classify.drop_mult=3.0", "classifier"]),
    "unknown-spacy-language": (["tokenizer.lang=klingon"], ["tokenizer.lang='klingon'", "spaCy has no language"]),
    "bptt-over-positions": (["model.backbone=gpt", "pretrain.bptt=100"], ["pretrain.bptt=100", "64 positions"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_bad_config_writes_nothing(case, tmp_path, capsys):
    overrides, fragments = CONFIG_CASES[case]
    argv = ["run", "--preset", "smoke", "--out", str(tmp_path / "r")]
    for item in overrides:
        argv += ["--set", item]
    line = one_error(capsys, argv)
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "r").exists()


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    """`device=cuda` on a machine without one ended in fastai's AssertionError after stages had started."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "--set", "device=cuda"])
    assert "device=cuda" in line and "no CUDA GPU" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, fragments", [
    (["serve", "--port", "70000"], ["--port 70000", "0 (any free port) to 65535"]),  # was OverflowError
    (["serve", "--port", "-5"], ["--port -5"]),
    (["serve", "--limit", "0"], ["--limit 0"]),
    (["compare", "--preset", "smoke", "--n-labels", "abc"], ["--n-labels", "'abc' is not a whole number"]),  # ValueError
    (["compare", "--preset", "smoke", "--backbones", ","], ["at least one backbone"]),  # said "unknown variants []"
    (["compare", "--preset", "smoke", "--variants", "full,nope"], ["unknown variants ['nope']"]),
    (["predict", "--run", "."], ["nothing to classify"]),
])
def test_bad_command_line_arguments(argv, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error(capsys, argv)
    assert all(fragment in line for fragment in fragments), line
    assert sorted(tmp_path.iterdir()) == []  # nothing written


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(tmp_path / "afile")])
    assert "afile" in line and "is a file, not a folder" in line  # was FileExistsError
    assert (tmp_path / "afile").read_text() == "mine"


def test_unknown_preset(tmp_path, capsys):
    assert "unknown preset 'tiny'" in one_error(capsys, ["run", "--preset", "tiny", "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("case", ["missing-run", "empty-folder", "foreign-folder", "lm-stage", "corrupt-model"])
def test_predict_with_a_bad_run_directory(case, run_dir, tmp_path, capsys):
    target = tmp_path / "run"
    if case == "empty-folder":
        target.mkdir()
    elif case == "foreign-folder":
        (target / "classify").mkdir(parents=True)
        (target / "classify" / "model.pt").write_bytes(b"\x80\x04not a ulmfit file")
    elif case == "lm-stage":
        target = run_dir / "adapt"
    elif case == "corrupt-model":
        import shutil

        shutil.copytree(run_dir / "classify", target / "classify")
        model = target / "classify" / "model.pt"
        model.write_bytes(model.read_bytes()[:1000])
    line = one_error(capsys, ["predict", "--run", str(target), "a fine film"])
    # corrupt-model said "no complete classify stage here (expected .../classify/classify/manifest.json)"
    expected = {"missing-run": "no such run directory", "empty-folder": "no complete classify stage",
                "foreign-folder": "no complete classify stage", "lm-stage": "expected 'classifier'",
                "corrupt-model": "model.pt: corrupted or truncated"}[case]
    assert expected in line and str(target) in line, line


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_predict_on_an_empty_text(text, run_dir, capsys):
    line = one_error(capsys, ["predict", "--run", str(run_dir), "a fine film", text])
    assert "text #2 is empty" in line


@pytest.mark.parametrize("where", ["stage-folder", "everywhere"])
def test_disk_full_while_writing(where, run_dir, monkeypatch, capsys):
    """The disk fills up while the classify stage folder is written (or already at its first
    epoch checkpoint): one error line, the old classify folder intact, no temp or partial folders."""
    before = snapshot(run_dir)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    to_csv = pd.DataFrame.to_csv

    def full_file(frame, path_or_buf=None, *args, **kwargs):  # a file fills the disk; an in-memory table does not
        if isinstance(path_or_buf, (str, os.PathLike)):
            full()
        return to_csv(frame, path_or_buf, *args, **kwargs)

    if where == "stage-folder":
        monkeypatch.setattr(pd.DataFrame, "to_csv", full_file)  # history.csv, in the middle of write_stage
    else:
        monkeypatch.setattr(stage_folder.torch, "save", full)  # every torch.save: checkpoints and model.pt
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(run_dir), "--set", "classify.lrs=[0.03,0.01]"])
    assert "No space left on device" in line and "classify" in line, line
    names, manifests = snapshot(run_dir)
    if where == "stage-folder":
        assert "nothing was written" in line
        # the epochs trained before the failed write are kept for a resume once space is freed
        names = [n for n in names if not n.startswith("classify.partial")]
    assert (names, manifests) == before


@pytest.mark.parametrize("store", ["empty", "holding-the-stages"])
def test_real_full_disk(store, full_disk, capsys, run_dir, tmp_path):  # run_dir: Prefect set up outside capsys
    """A run folder on a 1.2 MB filesystem: torch.save used to fail with `RuntimeError [enforce fail at
    inline_container.cc:672]` and leave a `*.tmp-PID` file. Now: one line that says the disk is full, no
    temporary file or folder anywhere (a finished epoch's checkpoint stays, for a resume). With an empty
    stage store the first stage trains and its write meets the full disk; with the stages in the store
    (run_dir's), copying them in meets it, and a stage that did fit is complete."""
    disk = full_disk("1200k")
    fresh = ["--set", f"cache_dir={tmp_path / 'cache'}"] if store == "empty" else []
    line = one_error(capsys, ["run", "--preset", "smoke", "--out", str(disk / "run"), *fresh])
    assert "No space left on device" in line, line
    assert [p for p in disk.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] == []
    written = [disk / "run" / stage for stage in ("pretrain", "adapt", "classify")
               if (disk / "run" / stage / "manifest.json").exists()]
    if store == "empty":
        assert written == []
    assert all(stage_folder.is_complete(folder) for folder in written) and len(written) < 3


def test_truncated_token_cache_is_rebuilt(run_dir, caplog):
    """A token cache file cut short (a full disk, a killed copy) made np.load fail deep in a stage
    (`ValueError: mmap length is greater than file size`); it is now detected and tokenized again."""
    import os

    cache = Path(os.environ["ULMFIT_CACHE_DIR"]) / "tokens"
    for ids in cache.glob("*/ids.npy"):
        ids.write_bytes(ids.read_bytes()[: ids.stat().st_size // 2])
    with caplog.at_level("INFO", logger="ulmfit"):
        assert main(["run", "--preset", "smoke", "--out", str(run_dir), "--rerun", "classify"]) == 0
    assert "cannot be used, tokenizing again" in caplog.text
