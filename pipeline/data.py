"""Load a text corpus as a validated DataFrame: a registry dataset by name, or the user's own file.

Every problem with the input raises one DataError that names the file (and the row or line), so
a user can fix the data without reading a traceback. Downloading lives in `pipeline.download`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tomllib
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.download import download_dataset
from pipeline.errors import DataError

REGISTRY_PATH = Path(__file__).parent / "datasets.toml"  # inside the package: found from any install
DEFAULT_DATA_DIR = "~/.cache/ulmfit-flow/data"
USER_FORMATS = ".csv, .tsv, .parquet, .jsonl, or a folder of .txt files"
# One document longer than this is refused: it is almost certainly a whole corpus (or a
# binary file) in one cell, and tokenizing it would hold it and its tokens in memory at once.
# WikiText-103's longest article is ~0.3 M characters, the longest IMDb review ~14 k.
MAX_DOC_CHARS = 5_000_000

Where = Callable[[int], str]  # row position -> "file, row 3 (0-based data row)" for messages
Corpus = tuple[pd.DataFrame, Where, str]  # rows (text[, label]), locator, origin (file/folder)

# An article title is " = Title = " (single "=") on its own between blank lines; sections are
# " = = Section = = ". Without the blank-line condition table legends such as " = Played , W = "
# also match (629 "articles" instead of 600 in wikitext-2 train).
_TITLE = re.compile(r"^ = [^=](?:.*[^=])? = $")
_NUMBER = re.compile(r"\s*[-+]?([0-9][0-9,]*\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*")
_MARKUP = (("<unk>", "xxunk"), (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def resolve_data_dir(override: str | None = None) -> Path:
    """override if given, else $ULMFIT_DATA_DIR, else ~/.cache/ulmfit-flow/data (resolved)."""
    raw = override or os.environ.get("ULMFIT_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(raw).expanduser().resolve()


def dataset_labels(source: str) -> list[str] | None:
    """The registry's label set for a name (["neg", "pos"] for imdb), None otherwise."""
    entry = _registry().get(source)
    return list(entry["labels"]) if entry and entry.get("labels") else None


def split_available(source: str, split: str, data_dir: Path | str | None = None) -> bool:
    """True if a registry dataset's split is in the data folder, or comes with its canonical archive.

    False for a split the dataset's archive lacks (fast.ai's WikiText archives have no valid split)
    and for a user's own path (a path has no splits)."""
    entry = _registry().get(source)
    if entry is None or split not in entry["splits"]:
        return False
    root = resolve_data_dir(None if data_dir is None else str(data_dir))
    if any(path.exists() for path, _ in _candidates(source, split, root, entry)):
        return True
    return split in entry.get("archive_splits", entry["splits"])


def load_corpus(source: str, split: str | None = None, *, data_dir: Path | str | None = None,
                text_col: str = "text", label_col: str | None = None,
                allowed_labels: list[str] | None = None, download: bool = True) -> pd.DataFrame:
    """Return column `text` (str) and, when label_col is given, `label` (str).

    `source` is a registry name (with a split) or a path to the user's data (split None).
    For registry names the file layout is fixed: text_col is ignored and label_col only says
    "with labels"; allowed_labels defaults to the registry's label set.
    """
    labeled = label_col is not None
    if source in _registry():
        root = resolve_data_dir(None if data_dir is None else str(data_dir))
        df, where, origin = _load_registry(source, split, root, labeled, download)
        if allowed_labels is None:
            allowed_labels = dataset_labels(source)
    else:
        df, where, origin = _load_user(_user_path(source, split), text_col, label_col)
    if not labeled:
        df = df.drop(columns="label", errors="ignore")
    return _validate(df, where, origin, allowed_labels)


@lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    try:
        with REGISTRY_PATH.open("rb") as f:
            return tomllib.load(f)["datasets"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise DataError(f"{REGISTRY_PATH}: cannot read the dataset registry: {e}") from e


# --- registry datasets ---------------------------------------------------------------------

def _load_registry(name: str, split: str | None, data_dir: Path, labeled: bool,
                   download: bool) -> Corpus:
    entry = _registry()[name]
    if split not in entry["splits"]:
        raise DataError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(entry['splits'])}")
    has_labels = split in entry.get("labeled_splits", [])
    if labeled and not has_labels:
        raise DataError(f"{name} split {split!r} is unlabeled; load it without label_col")
    candidates = _candidates(name, split, data_dir, entry)
    looked = ", ".join(str(path) for path, _ in candidates)
    if not any(path.exists() for path, _ in candidates):
        if not download:
            raise DataError(f"{name}/{split} not found (looked for {looked}) and download=False; "
                            f"get it from {entry['url']}")
        in_archive = entry.get("archive_splits", entry["splits"])
        if split not in in_archive:  # downloading again would not help
            raise DataError(f"{name}/{split} not found (looked for {looked}); the canonical archive "
                            f"{entry['url']} holds only {', '.join(in_archive)}")
        download_dataset(name, entry, data_dir)
    for path, read in candidates:
        if path.exists():
            return read()
    raise DataError(f"{entry['url']} was unpacked into {data_dir / name} but has no "
                    f"{split!r} split (looked for {looked})")


def _candidates(name: str, split: str, data_dir: Path, entry: dict) -> list[tuple[Path, Callable[[], Corpus]]]:
    """(path, reader) in look-up order: our parquet copy first, then the archive's layouts."""
    folder = data_dir / name
    parquet = folder / f"{split}.parquet"
    if entry["format"] == "wikitext":
        tokens, txt, csv = folder / f"wiki.{split}.tokens", folder / f"{split}.txt", folder / f"{split}.csv"
        return [(parquet, partial(_wikitext_parquet, parquet)), (tokens, partial(_wikitext_lines, tokens)),
                (txt, partial(_wikitext_lines, txt)), (csv, partial(_wikitext_csv, csv))]
    if split in entry.get("labeled_splits", []):
        return [(parquet, partial(_parquet_rows, parquet, ["text", "label"])),
                (folder / split, partial(_label_folders, folder / split, entry["labels"]))]
    # fast.ai's imdb.tgz has imdb/unsup/; the original aclImdb has train/unsup/
    return [(parquet, partial(_parquet_rows, parquet, ["text"]))] + [
        (path, partial(_txt_folder, path)) for path in (folder / split, folder / "train" / split)]


def _parquet_rows(path: Path, cols: list[str]) -> Corpus:
    return _read_parquet(path, cols), _rows(path), str(path)


def _wikitext_parquet(path: Path) -> Corpus:
    return _wikitext(path, _read_parquet(path, ["text"])["text"].fillna("").tolist())


def _wikitext_lines(path: Path) -> Corpus:  # wiki.{split}.tokens, one line per line
    return _wikitext(path, _decode(path, path.read_bytes()).split("\n"))


def _wikitext_csv(path: Path) -> Corpus:
    # fast.ai's wikitext-*.tgz: header-less csv, one whole article (lines joined by "\n") per row
    rows = _read_delimited(path, ",", header=None)
    return pd.DataFrame({"text": [_article(text.split("\n")) for text in rows[0]]}), _rows(path), str(path)


def _wikitext(path: Path, lines: list[str]) -> Corpus:
    starts = [i for i, line in enumerate(lines)
              if _TITLE.match(line) and _blank(lines, i - 1) and _blank(lines, i + 1)]
    bounds = ([0] if not starts or starts[0] > 0 else []) + starts + [len(lines)]
    articles = [_article(lines[a:b]) for a, b in zip(bounds, bounds[1:])]
    articles = [a for a in articles if a]  # text before the first title may be blank
    return pd.DataFrame({"text": articles}), lambda i: f"{path}, article {i}", str(path)


def _blank(lines: list[str], i: int) -> bool:
    return i < 0 or i >= len(lines) or not lines[i].strip()


def _article(lines: list[str]) -> str:
    # Replace before stripping: a line may end in " @,@ " and the markup needs its spaces.
    text = "\n".join(line for line in lines if line.strip())
    for markup, plain in _MARKUP:
        text = text.replace(markup, plain)
    return "\n".join(line.strip() for line in text.split("\n"))


# --- the user's own data -------------------------------------------------------------------

def _user_path(source: str, split: str | None) -> Path:
    path = Path(source).expanduser()
    known = ", ".join(sorted(_registry()))
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        raise DataError(f"unknown dataset {source!r}: not a registry name ({known}) and no such file or folder")
    if split is not None:
        raise DataError(f"{source}: split={split!r} only applies to registry names ({known}); "
                        f"a path is loaded whole, pass split=None")
    if not path.exists():
        raise DataError(f"{path}: not found; expected {USER_FORMATS}")
    return path


def _load_user(path: Path, text_col: str, label_col: str | None) -> Corpus:
    if path.is_dir():
        return _txt_tree(path, labeled=label_col is not None)
    cols = [text_col] + ([label_col] if label_col is not None else [])
    suffix, where = path.suffix.lower(), _rows(path)
    if suffix == ".parquet":
        df = _read_parquet(path, cols)
    elif suffix in (".csv", ".tsv"):
        df = _read_delimited(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".jsonl":
        df, line_nos = _read_jsonl(path)
        where = lambda i: f"{path}, line {line_nos[i]}"  # noqa: E731 (blank lines are skipped)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected {USER_FORMATS}")
    if len(df) == 0:
        raise DataError(f"{path}: empty corpus, no rows")
    _require_columns(path, list(df.columns), cols)
    return df[cols].set_axis(["text", "label"][:len(cols)], axis=1), where, str(path)


def _rows(path: Path) -> Where:
    return lambda i: f"{path}, row {i} (0-based data row)"


def _require_columns(path: Path, available: list, wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; available columns: {available}")


def _refuse_duplicates(path: Path, names: list) -> None:
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears {names.count(repeated[0])} times; rename the "
                        "copies so it is clear which one to read")


def _read_parquet(path: Path, cols: list[str]) -> pd.DataFrame:
    try:
        _refuse_duplicates(path, pq.read_schema(path).names)
        _require_columns(path, pq.read_schema(path).names, cols)
        return pd.read_parquet(path, columns=cols)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read parquet file: {e}") from e


def _read_delimited(path: Path, sep: str, header: int | None = 0) -> pd.DataFrame:
    text = _decode(path, path.read_bytes())
    if header is not None:  # pandas would rename a second "text" to "text.1" and read the first silently
        try:  # newline="": a lone carriage return is a line break to csv, as to pandas (not an error)
            header_row = next(csv.reader(io.StringIO(text, newline=""), delimiter=sep), [])
        except csv.Error as e:
            raise DataError(f"{path}: cannot read the header row: {e}") from e
        _refuse_duplicates(path, header_row)
    try:  # dtype=str, no NA guessing: a review that says "NA" is text, not a missing value
        return pd.read_csv(io.StringIO(text), sep=sep, header=header, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty corpus, the file has no rows") from e
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: cannot parse: {e}") from e


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    rows, line_nos = [], []
    for n, line in enumerate(_decode(path, path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=partial(_unique_keys, f"{path}, line {n}"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {n}: invalid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        line_nos.append(n)
    return pd.DataFrame(rows), line_nos


def _unique_keys(where: str, pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        repeated = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"{where}: key {repeated!r} appears {keys.count(repeated)} times in one object")
    return dict(pairs)


def _decode(path: Path, data: bytes) -> str:
    """Strict UTF-8 (a BOM is allowed); name the line of the first bad byte."""
    if (nul := data.find(b"\x00")) >= 0:  # checked first: "binary" says more than "not UTF-8"
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}, line {line}: NUL byte, a binary (or UTF-16) file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start})") from e


# --- folders of .txt files -----------------------------------------------------------------

def _natural(path: Path) -> list:
    # "2_7.txt" before "10_2.txt": the same order as our parquet copies (ascending review id)
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _sorted_txt(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.txt"), key=_natural)


def _label_folders(split_dir: Path, labels: list[str]) -> Corpus:
    for label in labels:
        if not (split_dir / label).is_dir():
            raise DataError(f"{split_dir / label}: missing label folder; expected "
                            f"{split_dir}/{{{','.join(labels)}}}/*.txt")
    return _txt_files(split_dir, [f for label in labels for f in _sorted_txt(split_dir / label)])


def _txt_folder(folder: Path) -> Corpus:
    return _txt_files(folder, _sorted_txt(folder), labeled=False)


def _txt_tree(folder: Path, labeled: bool) -> Corpus:
    top = _sorted_txt(folder)
    nested = [f for sub in sorted(p for p in folder.iterdir() if p.is_dir()) for f in _sorted_txt(sub)]
    if labeled and top:
        raise DataError(f"{top[0]}: a labeled folder needs every .txt file inside a label "
                        f"subfolder ({folder}/<label>/*.txt)")
    return _txt_files(folder, nested if labeled else top + nested, labeled)


def _txt_files(folder: Path, files: list[Path], labeled: bool = True) -> Corpus:
    """One document per file; the label is the parent folder's name."""
    if not files:
        raise DataError(f"{folder}: empty corpus, no .txt files (expected {folder}/*.txt "
                        f"or {folder}/<label>/*.txt)")
    df = pd.DataFrame({"text": [_decode(f, f.read_bytes()) for f in files]})
    if labeled:
        df["label"] = [f.parent.name for f in files]
    return df, lambda i: str(files[i]), str(folder)


# --- validation ----------------------------------------------------------------------------

def _first(mask: pd.Series) -> int | None:
    hits = mask.to_numpy().nonzero()[0]
    return int(hits[0]) if len(hits) else None


def _validate(df: pd.DataFrame, where: Where, origin: str, allowed: list[str] | None) -> pd.DataFrame:
    if df.empty:
        raise DataError(f"{origin}: empty corpus, no rows")
    df = df.reset_index(drop=True)
    text = df["text"]
    if (i := _first(text.isna())) is not None:
        raise DataError(f"{where(i)}: text is missing (null)")
    if (i := _first(~text.map(lambda v: isinstance(v, str)))) is not None:
        raise DataError(f"{where(i)}: text is {type(text[i]).__name__} {text[i]!r:.60}, not a string")
    if (i := _first(text.str.contains("\x00", regex=False))) is not None:
        raise DataError(f"{where(i)}: text contains NUL bytes (binary data?)")
    if (i := _first(text.str.strip().eq(""))) is not None:
        raise DataError(f"{where(i)}: empty or whitespace-only text")
    if (i := _first(text.str.len().gt(MAX_DOC_CHARS))) is not None:
        raise DataError(f"{where(i)}: one document of {len(text[i]):,} characters, over the limit of "
                        f"{MAX_DOC_CHARS:,} (pipeline.data.MAX_DOC_CHARS); split it into documents")
    if text.map(is_number).all():  # a csv's numbers are read as strings: a wrong text column
        raise DataError(f"{origin}: every text is a number ({where(0)}: {text[0]!r}); is the text column the right one?")
    out = pd.DataFrame({"text": text.astype(str)})
    if "label" in df:
        out["label"] = _validate_labels(df["label"], where, origin, allowed)
    return out


# What pandas would have read as missing (read_csv's default NA strings): as a label, "NA" is
# almost always an empty cell, not a class of its own.
NA_LABELS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
             "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def class_counts(labels: pd.Series) -> str:
    """"'neg' 12,500, 'pos' 12,500": every class found, most frequent first (for error messages)."""
    counts = sorted(labels.astype(str).value_counts().items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{label!r} {n:,}" for label, n in counts[:12])
    return shown + (f", ... ({len(counts)} classes)" if len(counts) > 12 else "")


def _validate_labels(label: pd.Series, where: Where, origin: str, allowed: list[str] | None) -> pd.Series:
    missing = label.isna() | label.astype(str).str.strip().eq("")
    if (i := _first(missing)) is not None:
        raise DataError(f"{where(i)}: label is missing")
    label = label.astype(str)
    if allowed is not None and (i := _first(~label.isin(allowed))) is not None:
        raise DataError(f"{where(i)}: label {label[i]!r} is not one of {sorted(allowed)}")
    if (i := _first(label.str.strip().isin(NA_LABELS))) is not None:
        raise DataError(f"{where(i)}: label {label[i]!r} reads as a missing value, not a class; fill it in or "
                        f"drop the row (classes found: {class_counts(label)})")
    variants = label.groupby(label.str.strip().str.casefold()).unique()
    if (clash := next((list(v) for v in variants if len(v) > 1), None)) is not None:
        raise DataError(f"{origin}: labels {' and '.join(map(repr, sorted(clash)))} differ only in case or "
                        f"surrounding spaces; make them the same (classes found: {class_counts(label)})")
    if label.nunique() < 2:
        raise DataError(f"{origin}: only one class present ({label[0]!r}); a classifier needs at least two")
    return label


def is_number(text: str) -> bool:
    """"5", " -3.5 ", "1,000", "2e3": a value that is a number, not a text to learn from or classify."""
    return _NUMBER.fullmatch(text) is not None


def is_registered(source: str) -> bool:
    """True if `source` names a registry dataset rather than a path to the user's own data."""
    return source in _registry()
