"""Load a text corpus as a validated DataFrame: a registry dataset by name, or the user's own file.

Every problem with the input raises one DataError that names the file (and the row or line), so
a user can fix the data without reading a traceback. Reading the files (tables, .txt folders) lives in
`pipeline.data.files`, downloading in `pipeline.data.download`; this module owns the registry and the checks.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import pandas as pd
import tomllib

from pipeline.data.download import download_dataset
from pipeline.data.files import (
    USER_FORMATS,
    Corpus,
    Where,
    decode,
    label_folders,
    load_user,
    read_delimited,
    read_parquet,
    row_locator,
    txt_folder,
)
from pipeline.errors import DataError

REGISTRY_PATH = Path(__file__).parent / "datasets.toml"  # inside the package: found from any install
DEFAULT_DATA_DIR = "~/.cache/ulmfit-flow/data"
# One document longer than this is refused: it is almost certainly a whole corpus (or a
# binary file) in one cell, and tokenizing it would hold it and its tokens in memory at once.
# WikiText-103's longest article is ~0.3 M characters, the longest IMDb review ~14 k.
MAX_DOC_CHARS = 5_000_000


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
        df, where, origin = load_user(_user_path(source, split), text_col, label_col)
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
                (folder / split, partial(label_folders, folder / split, entry["labels"]))]
    # fast.ai's imdb.tgz has imdb/unsup/; the original aclImdb has train/unsup/
    return [(parquet, partial(_parquet_rows, parquet, ["text"]))] + [
        (path, partial(txt_folder, path)) for path in (folder / split, folder / "train" / split)]


def _parquet_rows(path: Path, cols: list[str]) -> Corpus:
    return read_parquet(path, cols), row_locator(path), str(path)


def _wikitext_parquet(path: Path) -> Corpus:
    return _wikitext(path, read_parquet(path, ["text"])["text"].fillna("").tolist())


def _wikitext_lines(path: Path) -> Corpus:  # wiki.{split}.tokens, one line per line
    return _wikitext(path, decode(path, path.read_bytes()).split("\n"))


def _wikitext_csv(path: Path) -> Corpus:
    # fast.ai's wikitext-*.tgz: header-less csv, one whole article (lines joined by "\n") per row
    rows = read_delimited(path, ",", header=None)
    return pd.DataFrame({"text": [_article(text.split("\n")) for text in rows[0]]}), row_locator(path), str(path)


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
                        f"{MAX_DOC_CHARS:,} (pipeline.data.corpora.MAX_DOC_CHARS); split it into documents")
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
