"""Reading corpus files into rows: tables (.csv, .tsv, .parquet, .jsonl) and folders of .txt files, for
the registry's datasets (e.g. aclImdb's label folders, fast.ai's header-less wikitext csv) and the user's
own files alike. Each problem raises one DataError naming the file (and the row or line); `pipeline.data.corpora`
validates the rows and owns the registry.
"""
from __future__ import annotations

import csv
import io
import json
import re
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import DataError

USER_FORMATS = ".csv, .tsv, .parquet, .jsonl, or a folder of .txt files"

Where = Callable[[int], str]  # row position -> "file, row 3 (0-based data row)" for messages
Corpus = tuple[pd.DataFrame, Where, str]  # rows (text[, label]), locator, origin (file/folder)


def load_user(path: Path, text_col: str, label_col: str | None) -> Corpus:
    if path.is_dir():
        return _txt_tree(path, labeled=label_col is not None)
    cols = [text_col] + ([label_col] if label_col is not None else [])
    suffix, where = path.suffix.lower(), row_locator(path)
    if suffix == ".parquet":
        df = read_parquet(path, cols)
    elif suffix in (".csv", ".tsv"):
        df = read_delimited(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".jsonl":
        df, line_nos = _read_jsonl(path)
        where = lambda i: f"{path}, line {line_nos[i]}"  # noqa: E731 (blank lines are skipped)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected {USER_FORMATS}")
    if len(df) == 0:
        raise DataError(f"{path}: empty corpus, no rows")
    _require_columns(path, list(df.columns), cols)
    return df[cols].set_axis(["text", "label"][:len(cols)], axis=1), where, str(path)


def row_locator(path: Path) -> Where:
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


def read_parquet(path: Path, cols: list[str]) -> pd.DataFrame:
    try:
        _refuse_duplicates(path, pq.read_schema(path).names)
        _require_columns(path, pq.read_schema(path).names, cols)
        return pd.read_parquet(path, columns=cols)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read parquet file: {e}") from e


def read_delimited(path: Path, sep: str, header: int | None = 0) -> pd.DataFrame:
    text = decode(path, path.read_bytes())
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
    for n, line in enumerate(decode(path, path.read_bytes()).split("\n"), start=1):
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


def decode(path: Path, data: bytes) -> str:
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


def label_folders(split_dir: Path, labels: list[str]) -> Corpus:
    for label in labels:
        if not (split_dir / label).is_dir():
            raise DataError(f"{split_dir / label}: missing label folder; expected "
                            f"{split_dir}/{{{','.join(labels)}}}/*.txt")
    return _txt_files(split_dir, [f for label in labels for f in _sorted_txt(split_dir / label)])


def txt_folder(folder: Path) -> Corpus:
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
    df = pd.DataFrame({"text": [decode(f, f.read_bytes()) for f in files]})
    if labeled:
        df["label"] = [f.parent.name for f in files]
    return df, lambda i: str(files[i]), str(folder)
