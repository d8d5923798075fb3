"""spaCy word tokenization with fastai's rules, cached on disk as numeric arrays.

A tokenized corpus is stored corpus-locally: every distinct token gets an id in `types`
(sorted by frequency), the documents are one flat int32 array plus offsets. A stage's
vocabulary (min_freq / max_vocab) is then just a remapping array, so the same cached
tokens serve every vocabulary setting.

    types   = ["xxbos", "the", ",", ...]          counts = [n_docs, ...]
    ids     = [0 5 17 2 | 0 9 4 | 0 ...]         (int32, all documents back to back)
    offsets = [0,        4,      7, ...]           document d = ids[offsets[d]:offsets[d+1]]
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_dir

log = logging.getLogger("ulmfit")
TOKENIZER_VERSION = "spacy-fastai-rules-1"
SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj", "xxmask"]
UNK, PAD, BOS, MASK = 0, 1, 2, 9
PARALLEL_MIN_DOCS = 400  # below this, process start-up costs more than it saves


def default_cache_dir(override: str | None = None) -> Path:
    root = override or os.environ.get("ULMFIT_CACHE_DIR") or "~/.cache/ulmfit-flow"
    return Path(root).expanduser().resolve()


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

    def doc_tokens(self, i: int) -> list[str]:
        return [self.types[t] for t in self.doc(i)]


# --- tokenization --------------------------------------------------------------------------

def _make_tokenizer(lang: str):
    from fastai.text.core import SpacyTokenizer, TokenizeWithRules, defaults

    # fastai's default rules: fix_html (<br /> -> \n), xxrep, xxwrep, spaces, xxup, xxmaj, lowercase+xxbos
    return TokenizeWithRules(SpacyTokenizer(lang, special_toks=SPECIAL_TOKENS), rules=defaults.text_proc_rules)


def tokenize_texts(texts: list[str], lang: str = "en") -> list[list[str]]:
    """Tokenize in this process. fastai's `lowercase` rule prepends xxbos to every text."""
    tok = _make_tokenizer(lang)
    return [list(t) for t in tok(texts)]


def _tokenize_chunk(args: tuple[list[str], str]) -> list[list[str]]:
    texts, lang = args
    return tokenize_texts(texts, lang)


def _process_count(n_texts: int, n_workers: int) -> int:
    return n_workers if n_workers > 1 and n_texts >= PARALLEL_MIN_DOCS else 1


def _tokenize_parallel(texts: list[str], lang: str, n_workers: int) -> list[list[str]]:
    if _process_count(len(texts), n_workers) == 1:
        return tokenize_texts(texts, lang)
    n_chunks = n_workers * 8  # several chunks per worker so the progress log moves
    size = -(-len(texts) // n_chunks)
    chunks = [(texts[i:i + size], lang) for i in range(0, len(texts), size)]
    out: list[list[str]] = []
    # spawn, not fork: the caller may hold threads (Prefect) or CUDA state.
    with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
        for done, part in enumerate(pool.map(_tokenize_chunk, chunks), 1):
            out.extend(part)
            if done % n_workers == 0 or done == len(chunks):
                log.info("  tokenized %d/%d documents", len(out), len(texts))
    return out


def _to_arrays(docs: list[list[str]]) -> TokenizedCorpus:
    counts = Counter(t for d in docs for t in d)
    types = [t for t, _ in counts.most_common()]
    index = {t: i for i, t in enumerate(types)}
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(d) for d in docs])
    ids = np.fromiter((index[t] for d in docs for t in d), dtype=np.int32, count=int(offsets[-1]))
    return TokenizedCorpus(types, np.array([counts[t] for t in types], dtype=np.int64), ids, offsets)


# --- on-disk cache --------------------------------------------------------------------------

def token_cache_key(texts: list[str], lang: str) -> str:
    digest = hashlib.sha256(f"{TOKENIZER_VERSION}|{lang}|{len(texts)}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def _save(corpus: TokenizedCorpus, folder: Path) -> None:
    np.save(folder / "ids.npy", corpus.ids)
    np.save(folder / "offsets.npy", corpus.offsets)
    np.save(folder / "counts.npy", corpus.counts)
    (folder / "types.json").write_text(json.dumps(corpus.types, ensure_ascii=False))


def _load(folder: Path) -> TokenizedCorpus:
    types = json.loads((folder / "types.json").read_text())
    return TokenizedCorpus(types, np.load(folder / "counts.npy"), np.load(folder / "ids.npy"),
                           np.load(folder / "offsets.npy"))


def _save_once(corpus: TokenizedCorpus, folder: Path) -> None:
    """Cache the tokens unless another process (a DDP rank) has just cached the same ones."""
    if (folder / "types.json").exists():
        return
    try:
        with atomic_dir(folder) as tmp:
            _save(corpus, tmp)
    except OSError:
        if not (folder / "types.json").exists():  # a real failure, not a lost race
            raise


def tokenize_cached(texts: list[str], cache_dir: Path, lang: str = "en", n_workers: int = 2,
                    name: str = "corpus") -> TokenizedCorpus:
    """Tokenize `texts`, or load the result of an earlier identical call from `cache_dir`."""
    folder = Path(cache_dir) / "tokens" / token_cache_key(texts, lang)
    if (folder / "types.json").exists():
        log.info("tokens for %s: cached (%s)", name, folder.name)
        return _load(folder)
    start = time.perf_counter()
    log.info("tokenizing %s: %d documents with %d process(es)", name, len(texts),
             _process_count(len(texts), n_workers))
    corpus = _to_arrays(_tokenize_parallel(texts, lang, n_workers))
    _save_once(corpus, folder)
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
