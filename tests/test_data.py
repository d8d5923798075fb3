"""Tests for pipeline.data.corpora / pipeline.data.download: real slices, archive layouts, downloads, bad input."""
from __future__ import annotations

import functools
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.data import corpora
from pipeline.data.corpora import dataset_labels, load_corpus, resolve_data_dir
from pipeline.errors import DataError

# --- real data (the parquet copies in ../shared/data) --------------------------------------


@pytest.fixture(scope="module")
def real_dir() -> Path:
    path = Path(os.environ.get("ULMFIT_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data")
    if not (path / "imdb" / "train.parquet").exists():
        pytest.fail(f"real data not found in {path}: set ULMFIT_DATA_DIR")
    return path


def test_real_imdb_train_is_balanced(real_dir):
    df = load_corpus("imdb", "train", data_dir=real_dir, label_col="label", download=False)
    assert list(df.columns) == ["text", "label"] and len(df) == 25_000
    assert df["label"].value_counts().to_dict() == {"neg": 12_500, "pos": 12_500}
    assert df["text"].map(type).eq(str).all()


def test_real_imdb_unsup_is_unlabeled(real_dir):
    df = load_corpus("imdb", "unsup", data_dir=real_dir, download=False)
    assert list(df.columns) == ["text"] and len(df) == 50_000


@pytest.mark.parametrize("name,split,articles", [
    ("wikitext-2", "train", 600), ("wikitext-2", "valid", 60), ("wikitext-2", "test", 60),
    ("wikitext-103", "valid", 60), ("wikitext-103", "test", 60)])
def test_real_wikitext_one_row_per_article(real_dir, name, split, articles):
    df = load_corpus(name, split, data_dir=real_dir, download=False)
    assert len(df) == articles == corpora._registry()[name]["articles"][split]
    assert df["text"].str.match(r"= [^=]").all()  # every row starts with its title


def test_real_wikitext_markup_is_normalised(real_dir):
    df = load_corpus("wikitext-2", "valid", data_dir=real_dir, download=False)
    text = "\n".join(df["text"])
    for markup in ("@-@", "@,@", "@.@", "<unk>"):
        assert markup not in text
    assert text.count("xxunk") == 11_718  # the README's <unk> count for wikitext-2 valid
    assert df["text"][0].startswith("= Homarus gammarus =\nHomarus gammarus , known as")


def test_dataset_labels():
    assert dataset_labels("imdb") == ["neg", "pos"]
    assert dataset_labels("wikitext-103") is None
    assert dataset_labels("my/reviews.csv") is None
    assert corpora.is_registered("wikitext-2") and not corpora.is_registered("my/reviews.csv")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ULMFIT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ULMFIT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / ".cache" / "ulmfit-flow" / "data"


# --- canonical archive layouts --------------------------------------------------------------

IMDB_FILES = {
    "imdb/README": b"tiny imdb",
    "imdb/train/neg/10_2.txt": b"Dull and far too long.",
    "imdb/train/neg/2_1.txt": "Awful. Caf\u00e9 scenes only.".encode(),
    "imdb/train/pos/0_9.txt": b"A wonderful film.",
    "imdb/train/pos/1_8.txt": b"Great acting<br />and music.",
    "imdb/test/neg/0_3.txt": b"Not good.",
    "imdb/test/pos/0_10.txt": b"Loved it.",
    "imdb/unsup/0_0.txt": b"Saw it twice.",
    "imdb/unsup/1_0.txt": b"Popcorn movie.",
}

WIKI_LINES = [" ", " = Alpha = ", " ", " Alpha is a <unk> test @-@ case , with 1 @,@ 000 items , 3 @.@ 5 ratio . ",
              " ", " = = History = = ", " ", " It began in 1916 @,@ ", " Key : Pld ", " = Played , W = ",
              " Wins ", " ", " = Beta = ", " ", " Beta text . ", " "]
WIKI_ARTICLES = ["= Alpha =\nAlpha is a xxunk test-case , with 1,000 items , 3.5 ratio .\n= = History = =\n"
                 "It began in 1916,\nKey : Pld\n= Played , W =\nWins", "= Beta =\nBeta text ."]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_canonical_imdb_folders(tmp_path):
    write_tree(tmp_path, IMDB_FILES)
    df = load_corpus("imdb", "train", data_dir=tmp_path, label_col="label", download=False)
    # neg before pos, numeric file order (2_1 before 10_2), like the parquet copies
    assert df["label"].tolist() == ["neg", "neg", "pos", "pos"]
    assert df["text"][0] == "Awful. Caf\u00e9 scenes only."
    assert load_corpus("imdb", "unsup", data_dir=tmp_path, download=False)["text"].tolist() == [
        "Saw it twice.", "Popcorn movie."]


def test_aclimdb_unsup_under_train(tmp_path):
    write_tree(tmp_path, {"imdb/train/unsup/0_0.txt": b"Unlabeled review."})
    df = load_corpus("imdb", "unsup", data_dir=tmp_path, download=False)
    assert df["text"].tolist() == ["Unlabeled review."]


@pytest.mark.parametrize("file_name", ["wiki.valid.tokens", "valid.txt"])
def test_wikitext_token_files(tmp_path, file_name):
    write_tree(tmp_path, {f"wikitext-2/{file_name}": ("\n".join(WIKI_LINES) + "\n").encode()})
    df = load_corpus("wikitext-2", "valid", data_dir=tmp_path, download=False)
    assert df["text"].tolist() == WIKI_ARTICLES


# --- downloads from a local mirror ----------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path.startswith("/short/"):  # promises more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 100)
            return
        super().do_GET()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "srv"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.hits = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("ULMFIT_MIRROR", base)
    yield SimpleNamespace(root=root, hits=server.hits, base=base)
    server.shutdown()
    server.server_close()


def make_tgz(path: Path, files: dict[str, bytes], extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    return path


def test_download_imdb_then_reuse(mirror, tmp_path):
    make_tgz(mirror.root / "imdb.tgz", IMDB_FILES)
    data_dir = tmp_path / "data"
    df = load_corpus("imdb", "train", data_dir=data_dir, label_col="label")
    assert mirror.hits == ["/imdb.tgz"] and len(df) == 4
    assert (data_dir / "imdb" / "test" / "pos" / "0_10.txt").exists()
    assert sorted(p.name for p in data_dir.iterdir()) == ["imdb"]  # no archive, no temp left
    assert len(load_corpus("imdb", "unsup", data_dir=data_dir)) == 2
    assert len(load_corpus("imdb", "test", data_dir=data_dir, label_col="label")) == 2
    assert mirror.hits == ["/imdb.tgz"]  # the second and third loads did not download


def test_download_adds_to_existing_parquet_folder(mirror, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "imdb").mkdir(parents=True)
    pd.DataFrame({"text": ["only parquet", "two"], "label": ["pos", "neg"]}).to_parquet(data_dir / "imdb" / "train.parquet")
    make_tgz(mirror.root / "imdb.tgz", IMDB_FILES)
    assert len(load_corpus("imdb", "unsup", data_dir=data_dir)) == 2
    assert len(load_corpus("imdb", "train", data_dir=data_dir, label_col="label")) == 2  # parquet wins


def fastai_wikitext_csv(articles: list[list[str]]) -> bytes:
    return pd.DataFrame({0: ["\n".join(a) for a in articles]}).to_csv(header=False, index=False).encode()


@pytest.mark.parametrize("layout", ["fastai-csv", "tokens"])
def test_download_wikitext(mirror, tmp_path, layout):
    if layout == "fastai-csv":  # what fast.ai's wikitext-2.tgz holds: no valid split
        files = {"wikitext-2/train.csv": fastai_wikitext_csv([WIKI_LINES[:12], WIKI_LINES[12:]]),
                 "wikitext-2/test.csv": fastai_wikitext_csv([WIKI_LINES[12:]])}
    else:
        files = {f"wikitext-2/wiki.{s}.tokens": "\n".join(WIKI_LINES).encode() for s in ("train", "valid", "test")}
    make_tgz(mirror.root / "wikitext-2.tgz", files)
    data_dir = tmp_path / "data"
    assert load_corpus("wikitext-2", "train", data_dir=data_dir)["text"].tolist() == WIKI_ARTICLES
    if layout == "fastai-csv":
        with pytest.raises(DataError, match="archive .* holds only train, test"):
            load_corpus("wikitext-2", "valid", data_dir=data_dir)
    assert mirror.hits == ["/wikitext-2.tgz"]  # a split the archive lacks is not downloaded again


def test_truncated_download_leaves_nothing(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_MIRROR", mirror.base + "/short")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"short/imdb\.tgz"):
        load_corpus("imdb", "train", data_dir=data_dir)
    assert not data_dir.exists()  # nothing left, not even the folder the download made


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path, monkeypatch):
    make_tgz(mirror.root / "imdb.tgz", IMDB_FILES)
    registry = {**corpora._registry(), "imdb": {**corpora._registry()["imdb"], "sha256": "0" * 64}}
    monkeypatch.setattr(corpora, "_registry", lambda: registry)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="imdb.tgz is corrupt: sha256"):
        load_corpus("imdb", "train", data_dir=data_dir)
    assert not data_dir.exists()


def test_missing_on_server_names_url(mirror, tmp_path):
    with pytest.raises(DataError, match=r"download of http://127\.0\.0\.1:\d+/imdb\.tgz failed: HTTP Error 404"):
        load_corpus("imdb", "train", data_dir=tmp_path / "data")


def test_failed_unpack_leaves_nothing(mirror, tmp_path, monkeypatch):
    make_tgz(mirror.root / "imdb.tgz", IMDB_FILES)

    def disk_full(self, path, *args, **kwargs):
        (Path(path) / "imdb").mkdir()  # a half-written folder, as a crash would leave
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tarfile.TarFile, "extractall", disk_full)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="No space left"):
        load_corpus("imdb", "train", data_dir=data_dir)
    assert not data_dir.exists()


def _link(kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("imdb/train/pos/link.txt")
    info.type, info.linkname = kind, target
    return info


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 4
    return info


@pytest.mark.parametrize("member,reason", [
    (lambda tmp: _file("imdb/../../evil.txt"), "escape"),
    (lambda tmp: _file(str(tmp / "abs_evil.txt")), "escape"),
    (lambda tmp: _link(tarfile.SYMTYPE, str(tmp / "abs_evil.txt")), "link member"),
    (lambda tmp: _link(tarfile.LNKTYPE, "imdb/README"), "link member"),
], ids=["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_archive_is_refused(mirror, tmp_path, member, reason):
    make_tgz(mirror.root / "imdb.tgz", IMDB_FILES, extra=(member(tmp_path),))
    data_dir = tmp_path / "a" / "data"
    with pytest.raises(DataError, match=f"imdb.tgz: refusing .*{reason}"):
        load_corpus("imdb", "train", data_dir=data_dir)
    assert not (tmp_path / "a").exists()  # the folders the download made are gone too
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs_evil.txt").exists()


# --- the user's own data --------------------------------------------------------------------


def test_user_csv_with_custom_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"id": [1, 2, 3], "review": ["good", "NA", "bad, really"],
                  "stars": ["hi", "hi", "lo"]}).to_csv(path, index=False)
    df = load_corpus(str(path), text_col="review", label_col="stars")
    assert df.to_dict("list") == {"text": ["good", "NA", "bad, really"], "label": ["hi", "hi", "lo"]}
    assert list(load_corpus(str(path), text_col="review").columns) == ["text"]


def test_user_tsv_parquet_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\nfine film\t1\nbad one\t0\n")
    pd.DataFrame({"text": ["x y", "z"], "label": [1, 0]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "a.jsonl").write_text('{"text": "x y", "label": 1}\n\n{"text": "z", "label": 0}\n')
    for name in ("a.tsv", "a.parquet", "a.jsonl"):
        df = load_corpus(str(tmp_path / name), label_col="label", allowed_labels=["0", "1"])
        assert df["label"].tolist() == ["1", "0"], name


def test_user_label_folders(tmp_path):
    write_tree(tmp_path / "mine", {"spam/b.txt": b"buy now", "ham/a10.txt": b"see you", "ham/a9.txt": b"lunch?"})
    df = load_corpus(str(tmp_path / "mine"), label_col="label")
    assert df.to_dict("list") == {"text": ["lunch?", "see you", "buy now"], "label": ["ham", "ham", "spam"]}
    assert load_corpus(str(tmp_path / "mine"))["text"].tolist() == ["lunch?", "see you", "buy now"]


def test_user_flat_txt_folder(tmp_path):
    write_tree(tmp_path / "docs", {"2.txt": b"second", "1.txt": b"first"})
    assert load_corpus(str(tmp_path / "docs"))["text"].tolist() == ["first", "second"]


# --- bad input: one DataError naming the file (and row) -------------------------------------


def _csv(name: str, content: bytes):
    def build(tmp: Path):
        (tmp / name).write_bytes(content)
        return str(tmp / name), {"label_col": "label"}
    return build


def _parquet(name: str, df: pd.DataFrame, **kwargs):
    def build(tmp: Path):
        df.to_parquet(tmp / name)
        return str(tmp / name), {"label_col": "label", **kwargs}
    return build


def _tree(name: str, files: dict[str, bytes], **kwargs):
    def build(tmp: Path):
        (tmp / name).mkdir()
        write_tree(tmp / name, files)
        return str(tmp / name), kwargs
    return build


def _raw(source: str, **kwargs):
    return lambda tmp: (source, kwargs)


BAD_INPUTS = {
    "missing-file": (lambda tmp: (str(tmp / "nope.csv"), {}), ["nope.csv", "not found", ".parquet"]),
    "missing-folder": (lambda tmp: (str(tmp / "nodir"), {}), ["nodir", "not found", "folder of .txt"]),
    "unknown-name": (_raw("imbd", split="train"), ["'imbd'", "imdb, wikitext-103, wikitext-2"]),
    "unknown-split": (_raw("imdb", split="valid"), ["imdb", "'valid'", "train, test, unsup"]),
    "no-split": (_raw("wikitext-2"), ["wikitext-2", "None", "train, valid, test"]),
    "split-for-path": (lambda tmp: (str(tmp), {"split": "train"}), ["split='train'", "split=None"]),
    "labels-on-unsup": (_raw("imdb", split="unsup", label_col="label"), ["unsup", "unlabeled"]),
    "missing-text-col": (_csv("r.csv", b"review,label\nok,a\nfine,b\n"), ["r.csv", "'text'", "['review', 'label']"]),
    "misnamed-label-col": (_parquet("r.parquet", pd.DataFrame({"text": ["a", "b"], "lable": ["x", "y"]})),
                           ["r.parquet", "'label'", "['text', 'lable']"]),
    "empty-csv": (_csv("e.csv", b""), ["e.csv", "empty corpus"]),
    "header-only-csv": (_csv("h.csv", b"text,label\n"), ["h.csv", "empty corpus"]),
    "empty-parquet": (_parquet("e.parquet", pd.DataFrame({"text": pd.Series([], dtype=str)}), label_col=None),
                      ["e.parquet", "empty corpus"]),
    "empty-folder": (_tree("nothing", {}), ["nothing", "empty corpus", "no .txt files"]),
    "blank-text-csv": (_csv("b.csv", b"text,label\nok,a\n   ,b\n"), ["b.csv", "row 1 (0-based data row)", "empty or whitespace"]),
    "empty-text-csv": (_csv("b.csv", b"text,label\nok,a\nfine,b\n,a\n"), ["b.csv", "row 2 (0-based", "empty"]),
    "null-text-parquet": (_parquet("n.parquet", pd.DataFrame({"text": ["a", None], "label": ["x", "y"]})),
                          ["n.parquet", "row 1", "text is missing"]),
    "number-text-parquet": (_parquet("i.parquet", pd.DataFrame({"text": [1, 2], "label": ["x", "y"]})),
                            ["i.parquet", "row 0", "not a string"]),
    "blank-text-file": (_tree("docs", {"a.txt": b"fine", "b.txt": b" \n\t"}), ["b.txt", "empty or whitespace"]),
    "blank-text-jsonl": (_csv("j.jsonl", b'{"text": "a", "label": "x"}\n\n{"text": " ", "label": "y"}\n'),
                         ["j.jsonl", "line 3", "empty"]),
    "bad-json": (_csv("j.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n'), ["j.jsonl", "line 2", "invalid JSON"]),
    "label-not-allowed": (_parquet("l.parquet", pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "meh", "neg"]}),
                                   allowed_labels=["neg", "pos"]), ["l.parquet", "row 1", "'meh'", "['neg', 'pos']"]),
    "one-class": (_csv("o.csv", b"text,label\na,pos\nb,pos\n"), ["o.csv", "only one class", "'pos'"]),
    "null-label-parquet": (_parquet("n.parquet", pd.DataFrame({"text": ["a", "b"], "label": ["x", None]})),
                           ["n.parquet", "row 1", "label is missing"]),
    "empty-label-csv": (_csv("m.csv", b"text,label\na,x\nb,\nc,y\n"), ["m.csv", "row 1", "label is missing"]),
    "not-utf8-csv": (_csv("l1.csv", b"text,label\na,x\ncaf\xe9,y\n"), ["l1.csv", "line 3", "not UTF-8"]),
    "nul-bytes-csv": (_csv("bin.csv", b"text,label\na\x00b,x\n"), ["bin.csv", "line 2", "binary"]),
    "not-utf8-txt": (_tree("docs", {"pos/good.txt": b"fine", "neg/bad.txt": b"\xff\xfeoops"}, label_col="label"),
                     ["bad.txt", "line 1", "not UTF-8"]),
    "binary-txt": (_tree("docs", {"img.txt": b"GIF89a\n\x00\x01\xff"}), ["img.txt", "line 2", "binary"]),
    "corrupt-parquet": (_csv("c.parquet", b"PAR1 this is not parquet"), ["c.parquet", "cannot read parquet"]),
    "unsupported-type": (_csv("r.xlsx", b"PK"), ["r.xlsx", "unsupported file type", ".jsonl"]),
    "txt-outside-label-folder": (_tree("docs", {"stray.txt": b"x", "pos/a.txt": b"y"}, label_col="label"),
                                 ["stray.txt", "label subfolder"]),
    "registry-offline": (lambda tmp: ("imdb", {"split": "test", "data_dir": tmp / "empty", "download": False}),
                         ["imdb/test.parquet", "download=False", "https://s3.amazonaws.com/fast-ai-nlp/imdb.tgz"]),
    "missing-label-folder": (_tree("imdb", {"train/pos/0_9.txt": b"good"}), ["neg", "missing label folder"]),
    # issue 11: input read in ways the user did not mean
    "duplicate-columns-csv": (_csv("d.csv", b"text,text,label\na,b,x\nc,d,y\n"), ["d.csv", "column 'text'", "2 times"]),
    "duplicate-columns-tsv": (_csv("d.tsv", b"text\tlabel\tlabel\na\tx\ty\nc\ty\tx\n"), ["d.tsv", "'label'", "2 times"]),
    "duplicate-columns-parquet": (lambda tmp: _duplicate_parquet(tmp / "d.parquet"), ["d.parquet", "'text'", "2 times"]),
    "duplicate-keys-jsonl": (_csv("d.jsonl", b'{"text": "a", "text": "b", "label": "x"}\n'), ["d.jsonl", "line 1", "'text'"]),
    "na-label": (_csv("na.csv", b"text,label\na,x\nb,NA\nc,y\nd,x\n"),
                 ["na.csv", "row 1", "'NA'", "missing value", "classes found: 'x' 2, 'NA' 1, 'y' 1"]),
    "label-case-variants": (_csv("c.csv", b"text,label\na,neg\nb,Neg\nc,pos\nd,neg\n"),
                            ["c.csv", "'Neg' and 'neg'", "differ only in case", "'neg' 2, 'Neg' 1, 'pos' 1"]),
    "label-space-variants": (_csv("s.csv", b"text,label\na,pos\nb,pos \nc,neg\n"), ["s.csv", "'pos' and 'pos '", "spaces"]),
}


def _duplicate_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([["a", "b"], ["c", "d"], ["x", "y"]], names=["text", "text", "label"]), path)
    return str(path), {"label_col": "label"}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_one_data_error(tmp_path, case):
    build, expected = BAD_INPUTS[case]
    if case == "missing-label-folder":  # a registry name over a broken archive layout
        build(tmp_path)
        source, kwargs = "imdb", {"split": "train", "data_dir": tmp_path, "label_col": "label", "download": False}
    else:
        source, kwargs = build(tmp_path)
    with pytest.raises(DataError) as info:
        load_corpus(source, **kwargs)
    for part in expected:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


# --- labeled splits for stage 3 (issue 11: a split too small to train or test on, registry test corpora) ---

def _labeled_csv(tmp: Path, n: int) -> str:
    rows = "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))
    (tmp / f"r{n}.csv").write_text("text,label\n" + rows)
    return str(tmp / f"r{n}.csv")


@pytest.mark.parametrize("n_rows, n_valid, fragments", [
    (4, 2, ["4 labeled rows are too few", "20% out as the test set (0 rows)", "'neg' 2, 'pos' 2"]),  # was IndexError
    (10, 8, ["0 rows are left for training", "classify.n_valid=8", "'neg' 4, 'pos' 4"]),  # was AttributeError
])
def test_splits_too_small_are_one_data_error(tmp_path, n_rows, n_valid, fragments):
    from pipeline.config import load_config
    from pipeline.stages.classify_data import load_splits

    cfg = load_config("smoke", [f"classify.corpus={_labeled_csv(tmp_path, n_rows)}", f"classify.n_valid={n_valid}",
                                "classify.n_labels=null", "classify.n_test=null"])
    with pytest.raises(DataError) as info:
        load_splits(cfg.classify, tmp_path, cfg.seed)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_class_shortfall_says_what_classes_were_found(tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.classify_data import load_splits

    (tmp_path / "u.csv").write_text("text,label\n" + "".join(f"r{i},{'a' if i < 30 else 'b'}\n" for i in range(36)))
    cfg = load_config("smoke", [f"classify.corpus={tmp_path / 'u.csv'}", "classify.n_valid=4", "classify.n_labels=20"])
    with pytest.raises(DataError, match=r"class 'b'.*classes found: 'a' 2\d, 'b' \d"):
        load_splits(cfg.classify, tmp_path, cfg.seed)


def test_registry_name_as_test_corpus_means_its_test_split(real_dir):
    """`classify.test_corpus=imdb` said "dataset 'imdb' has no split None"."""
    from pipeline.config import load_config
    from pipeline.stages.classify_data import load_splits

    cfg = load_config("smoke", ["classify.test_corpus=imdb"])
    splits = load_splits(cfg.classify, real_dir, cfg.seed)
    default = load_splits(load_config("smoke").classify, real_dir, cfg.seed)
    assert splits.test_source == "imdb" and len(splits.test) == cfg.classify.n_test
    assert splits.test["text"].tolist() == default.test["text"].tolist()  # the same test split
