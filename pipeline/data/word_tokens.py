"""spaCy word tokenization with fastai's rules, cached on disk as numeric arrays.

A tokenized corpus is stored corpus-locally: every distinct token gets an id in `types`
(sorted by frequency), the documents are one flat int32 array plus offsets. A stage's
vocabulary (min_freq / max_vocab) is then just a remapping array, so the same cached
tokens serve every vocabulary setting.

    types   = ["xxbos", "the", ",", ...]          counts = [n_docs, ...]
    ids     = [0 5 17 2 | 0 9 4 | 0 ...]         (int32, all documents back to back)
    offsets = [0,        4,      7, ...]           document d = ids[offsets[d]:offsets[d+1]]

Tokenization streams: documents go to the worker processes in chunks of ~CHUNK_CHARS
characters (at most two chunks per worker in flight), each chunk comes back as compact
arrays, and its ids are appended to a file. Only the type table and document lengths grow
in memory, so a WikiText-103-size corpus never sits in RAM as lists of strings. A loaded
corpus keeps `ids` memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
import time
from array import array
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.artifacts.stage_folder import MANIFEST, atomic_dir, verify_folder, write_manifest
from pipeline.errors import ArtifactError

log = logging.getLogger("ulmfit")
TOKENIZER_VERSION = "spacy-fastai-rules-1"
SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj", "xxmask"]
UNK, PAD, BOS, MASK = 0, 1, 2, 9
PARALLEL_MIN_DOCS = 400  # below this, process start-up costs more than it saves
CHUNK_CHARS = 250_000  # text per tokenization chunk: bounds what is in flight, not the corpus size
REWRITE_BLOCK = 1 << 22  # token ids per block when rewriting the id file in frequency order


@dataclass(frozen=True)
class TokenizedCorpus:
    types: list[str]
    counts: np.ndarray  # int64, occurrences of each type
    ids: np.ndarray  # int32, all documents concatenated
    offsets: np.ndarray  # int64, len = n_docs + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


# --- tokenization --------------------------------------------------------------------------

@lru_cache(maxsize=4)  # one tokenizer per process and language (spaCy start-up is not free)
def _make_tokenizer(lang: str):
    from fastai.text.core import SpacyTokenizer, TokenizeWithRules, defaults

    spacy_tok = SpacyTokenizer(lang, special_toks=SPECIAL_TOKENS)
    # spaCy refuses texts over nlp.max_length (1M characters, error E088) to protect its parser's
    # memory; only its tokenizer runs here, linear in the text. The length limit is the loaders'
    # (pipeline.data.corpora.MAX_DOC_CHARS), applied before a text gets here; fastai's rules lengthen a text
    # (xxmaj, xxup ...), so spaCy's own check would fire below it.
    spacy_tok.pipe.__self__.max_length = sys.maxsize
    # fastai's default rules: fix_html (<br /> -> \n), xxrep, xxwrep, spaces, xxup, xxmaj, lowercase+xxbos
    return TokenizeWithRules(spacy_tok, rules=defaults.text_proc_rules)


def tokenize_texts(texts: list[str], lang: str = "en") -> list[list[str]]:
    """Tokenize in this process. fastai's `lowercase` rule prepends xxbos to every text."""
    tok = _make_tokenizer(lang)
    return [list(t) for t in tok(texts)]


def _process_count(n_texts: int, n_workers: int) -> int:
    return n_workers if n_workers > 1 and n_texts >= PARALLEL_MIN_DOCS else 1


Chunk = tuple[list[str], np.ndarray, np.ndarray]  # chunk-local types, int32 ids into them, int64 doc lengths


def _tokenize_chunk(args: tuple[list[str], str]) -> Chunk:
    """Tokenize a chunk and return it compactly: the tokens never leave the worker as lists of str."""
    texts, lang = args
    index: dict[str, int] = {}
    ids, lengths = array("i"), array("q")
    for toks in _make_tokenizer(lang)(texts):
        ids.extend(index.setdefault(t, len(index)) for t in toks)
        lengths.append(len(toks))
    return list(index), np.frombuffer(ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64)


def _chunks(texts: list[str], lang: str) -> Iterator[tuple[list[str], str]]:
    """Consecutive documents, about CHUNK_CHARS characters at a time (a longer document alone)."""
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= CHUNK_CHARS:
            yield texts[start:i + 1], lang
            start, size = i + 1, 0
    if start < len(texts):
        yield texts[start:], lang


def _stream_chunks(texts: list[str], lang: str, n_workers: int) -> Iterator[Chunk]:
    """Tokenized chunks in document order, at most 2 per worker in flight (bounded memory)."""
    n_proc = _process_count(len(texts), n_workers)
    if n_proc == 1:
        yield from map(_tokenize_chunk, _chunks(texts, lang))
        return
    # spawn, not fork: the caller may hold threads (Prefect) or CUDA state. The workers ignore Ctrl-C
    # (the terminal sends it to them too): the parent stops them, without a traceback from each.
    pool = ProcessPoolExecutor(n_proc, mp_context=get_context("spawn"), initializer=_ignore_sigint)
    try:
        pending: deque = deque()
        for chunk in _chunks(texts, lang):
            pending.append(pool.submit(_tokenize_chunk, chunk))
            if len(pending) >= 2 * n_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # on an interrupt, chunks not started yet are dropped instead of tokenized first
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tokenize_to_disk(texts: list[str], lang: str, n_workers: int, folder: Path, name: str) -> None:
    """Tokenize chunk by chunk, appending ids to disk; then order the types by frequency and
    rewrite the ids in one streaming pass. Only the vocabulary and per-document lengths stay in RAM."""
    stoi: dict[str, int] = {}
    counts = np.zeros(0, dtype=np.int64)
    lengths: list[np.ndarray] = []
    raw, n_docs, last_log = folder / "ids.raw", 0, time.perf_counter()
    with open(raw, "wb") as out:
        for types, ids, lens in _stream_chunks(texts, lang, n_workers):
            remap = np.fromiter((stoi.setdefault(t, len(stoi)) for t in types), dtype=np.int32, count=len(types))
            global_ids = remap[ids]
            if len(stoi) > len(counts):
                counts = np.concatenate([counts, np.zeros(len(stoi) - len(counts), dtype=np.int64)])
            counts += np.bincount(global_ids, minlength=len(counts))
            out.write(global_ids.tobytes())
            lengths.append(lens)
            n_docs += len(lens)
            if time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log.info("  tokenized %d/%d documents of %s", n_docs, len(texts), name)
    # Most frequent first; ties keep first-occurrence order (what Counter.most_common gives).
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    n_tokens = raw.stat().st_size // 4
    with open(raw, "rb") as src, open(folder / "ids.npy", "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, {"descr": "<i4", "fortran_order": False, "shape": (n_tokens,)})
        while block := src.read(4 * REWRITE_BLOCK):
            dst.write(rank[np.frombuffer(block, dtype=np.int32)].astype("<i4").tobytes())
    raw.unlink()
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64), out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "counts.npy", counts[order])
    types = list(stoi)
    (folder / "types.json").write_text(json.dumps([types[i] for i in order], ensure_ascii=False))


# --- on-disk cache --------------------------------------------------------------------------

def token_cache_key(texts: list[str], lang: str) -> str:
    digest = hashlib.sha256(f"{TOKENIZER_VERSION}|{lang}|{len(texts)}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def _load(folder: Path) -> TokenizedCorpus:
    """The ids stay on disk (memory-mapped, read-only); the rest is small."""
    types = json.loads((folder / "types.json").read_text())
    return TokenizedCorpus(types, np.load(folder / "counts.npy"), np.load(folder / "ids.npy", mmap_mode="r"),
                           np.load(folder / "offsets.npy"))


CACHE_FILES = {"types.json", "counts.npy", "ids.npy", "offsets.npy", "ids.raw", MANIFEST}


def _cache_problem(folder: Path) -> str | None:
    """None if the cached tokens are intact (every file matches its sha256 in the manifest)."""
    if not (folder / MANIFEST).exists():
        return _adopt_older_entry(folder)
    try:
        verify_folder(folder, sorted(CACHE_FILES - {"ids.raw", MANIFEST}))
    except (ArtifactError, OSError) as err:
        return str(err)
    return None


def _adopt_older_entry(folder: Path) -> str | None:
    """An entry from before caches had manifests: kept (and given a manifest) when its arrays fit
    together, so an upgrade does not tokenize WikiText-103 again; otherwise why it cannot be used."""
    try:
        corpus = _load(folder)
        consistent = (corpus.offsets[0] == 0 and corpus.offsets[-1] == len(corpus.ids)
                      and len(corpus.counts) == len(corpus.types) and corpus.counts.sum() == len(corpus.ids))
    except (OSError, ValueError, EOFError):
        consistent = False
    if not consistent:
        return f"{folder}: no {MANIFEST} and its arrays do not fit together (cut short?)"
    write_manifest(folder)
    return None


def _only_cache_files(folder: Path) -> str | None:
    """A token-cache folder may be replaced when it holds nothing but token-cache files."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return "exists and is not a token-cache folder"
    extra = sorted(p.name for p in folder.iterdir() if p.name not in CACHE_FILES) if folder.is_dir() else []
    return f"holds files that are not token-cache files ({', '.join(extra[:3])})" if extra else None


def tokenize_cached(texts: list[str], cache_dir: Path, lang: str = "en", n_workers: int = 2,
                    name: str = "corpus") -> TokenizedCorpus:
    """Tokenize `texts`, or load the result of an earlier identical call from `cache_dir`.

    A cached entry is checked against its manifest's sha256s first: a truncated or damaged
    cache file is tokenized again, never loaded."""
    folder = Path(cache_dir) / "tokens" / token_cache_key(texts, lang)
    if folder.exists():
        problem = _cache_problem(folder)
        if problem is None:
            log.info("tokens for %s: cached (%s)", name, folder.name)
            return _load(folder)
        log.warning("token cache for %s cannot be used, tokenizing again: %s", name, problem)
    start = time.perf_counter()
    log.info("tokenizing %s: %d documents with %d process(es)", name, len(texts),
             _process_count(len(texts), n_workers))
    try:
        with atomic_dir(folder, _only_cache_files) as tmp:
            _tokenize_to_disk(texts, lang, n_workers, tmp, name)
            write_manifest(tmp)
    except ArtifactError:
        if _cache_problem(folder) is not None:
            raise
        # another run (a different run directory) cached the same texts at the same moment
    corpus = _load(folder)
    secs = time.perf_counter() - start
    log.info("tokenized %s: %d tokens in %.1fs (%.0f tokens/s)", name, corpus.n_tokens, secs,
             corpus.n_tokens / max(secs, 1e-9))
    return corpus


# --- vocabulary -------------------------------------------------------------------------------

def build_vocab(corpus: TokenizedCorpus, min_freq: int, max_vocab: int) -> list[str]:
    """fastai's rule: special tokens first, then types by frequency (count >= min_freq),
    capped at max_vocab, padded to a multiple of 8 (tensor-core friendly)."""
    words = [t for t, c in zip(corpus.types, corpus.counts) if c >= min_freq and t not in SPECIAL_TOKENS]
    itos = SPECIAL_TOKENS + words[: max(max_vocab - len(SPECIAL_TOKENS), 0)]
    while len(itos) % 8:
        itos.append(f"xxfake{len(itos)}")
    return itos


def numericalize(corpus: TokenizedCorpus, itos: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Map the corpus onto `itos`; unknown tokens become xxunk. Returns (ids, offsets)."""
    stoi = {t: i for i, t in enumerate(itos)}
    remap = np.array([stoi.get(t, UNK) for t in corpus.types], dtype=np.int32)
    return remap[corpus.ids], corpus.offsets


def numericalize_tokens(tokens: list[str], itos: list[str]) -> list[int]:
    stoi = {t: i for i, t in enumerate(itos)}
    return [stoi.get(t, UNK) for t in tokens]


def detokenize(tokens: list[str]) -> str:
    """Undo fastai's case markers for display: xxmaj word -> Word, xxup word -> WORD."""
    words, marker = [], None
    for tok in tokens:
        if tok in ("xxmaj", "xxup"):
            marker = tok
        elif tok not in ("xxbos", "xxeos", "xxpad"):
            words.append(tok.capitalize() if marker == "xxmaj" else tok.upper() if marker == "xxup" else tok)
            marker = None
    return " ".join(words)
