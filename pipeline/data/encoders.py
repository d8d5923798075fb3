"""Text encoders: texts -> token-id documents, for every tokenizer kind, behind one interface.

    kind        vocabulary                                   stage 2 (adapt)
    spacy       words (spaCy + fastai rules), per stage       rebuilt on the target text; embeddings transferred
    wordpiece   HF `tokenizers` WordPiece, trained in stage 1  reused as is
    bpe         HF `tokenizers` byte-level BPE, stage 1        reused as is
    pretrained  the tokenizer.json of an `init_from` checkpoint reused as is

Every document starts with the encoder's `bos` id (fastai's xxbos for our own tokenizers).
Encoders save themselves as a small dict of strings (`state()`) inside each model.pt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config_base import default_cache_dir
from pipeline.data.word_tokens import (
    BOS,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    build_vocab,
    detokenize,
    numericalize,
    numericalize_tokens,
    tokenize_cached,
    tokenize_texts,
)
from pipeline.errors import ArtifactError, ConfigError

CACHE_MIN_DOCS = 16


@dataclass(frozen=True)
class Specials:
    unk: int
    pad: int
    bos: int | None
    mask: int | None
    n_reserved: int  # ids below this are special tokens (never sampled as "random" replacements)


WORD_SPECIALS = Specials(UNK, PAD, BOS, MASK, len(SPECIAL_TOKENS))


def word_specials(itos: list[str]) -> Specials:
    """The special ids of a word vocabulary, found by name: ours puts SPECIAL_TOKENS first, a published
    one (fastai's WikiText-103) may order them otherwise and has no xxmask."""
    if itos[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS:
        return WORD_SPECIALS
    head = 0
    while head < len(itos) and itos[head].startswith("xx") and head < 2 * len(SPECIAL_TOKENS):
        head += 1
    index = {token: i for i, token in enumerate(itos[:head])}
    if index.get("xxunk") != UNK or "xxpad" not in index:  # unknown words are numericalized to UNK
        raise ArtifactError(f"a word vocabulary must start with xxunk and hold xxpad; it starts {itos[:5]}")
    return Specials(UNK, index["xxpad"], index.get("xxbos"), index.get("xxmask"), head)


class WordEncoder:
    """spaCy words; the vocabulary (itos) is built per stage from that stage's corpus."""

    refits_on_target = True

    def __init__(self, itos: list[str], lang: str = "en", cache_dir=None, n_workers: int = 0):
        self.itos, self.lang, self.n_workers = list(itos), lang, n_workers
        self.cache_dir, self.specials = default_cache_dir(cache_dir), word_specials(self.itos)

    def encode(self, texts: list[str], name: str = "texts", cache: bool = True) -> list[np.ndarray]:
        if len(texts) < CACHE_MIN_DOCS or not cache:  # prompts, predictions: not worth a cache entry
            return [np.array(numericalize_tokens(t, self.itos), dtype=np.int64) for t in tokenize_texts(texts, self.lang)]
        corpus = tokenize_cached(texts, self.cache_dir, self.lang, self.n_workers, name)
        ids, offsets = numericalize(corpus, self.itos)
        return [ids[offsets[i]:offsets[i + 1]].astype(np.int64) for i in range(len(offsets) - 1)]

    def decode(self, ids) -> str:
        return detokenize([self.itos[i] for i in ids])

    def state(self) -> dict:
        return {"kind": "spacy", "lang": self.lang}


class SubwordEncoder:
    """A Hugging Face `tokenizers.Tokenizer`; its vocabulary is fixed once trained (or loaded)."""

    refits_on_target = False

    def __init__(self, tokenizer, kind: str, specials: Specials):
        self.tokenizer, self.kind, self.specials = tokenizer, kind, specials
        self.itos = [tokenizer.id_to_token(i) or f"<{i}>" for i in range(tokenizer.get_vocab_size())]

    def encode(self, texts: list[str], name: str = "texts", cache: bool = True) -> list[np.ndarray]:
        head = [] if self.specials.bos is None else [self.specials.bos]
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.array(head + e.ids, dtype=np.int64) for e in encoded]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def state(self) -> dict:
        return {"kind": self.kind, "json": self.tokenizer.to_str(), "specials": json.dumps(self.specials.__dict__)}


def fit_encoder(tok_cfg, texts: list[str], min_freq: int, max_vocab: int, cache_dir=None, name: str = "corpus"):
    """Build the encoder a stage trains with: a word vocabulary, or a freshly trained subword tokenizer."""
    if tok_cfg.kind == "spacy":
        corpus = tokenize_cached(texts, default_cache_dir(cache_dir), tok_cfg.lang, tok_cfg.n_workers, name)
        return WordEncoder(build_vocab(corpus, min_freq, max_vocab), tok_cfg.lang, cache_dir, tok_cfg.n_workers)
    return SubwordEncoder(_train_subword(tok_cfg.kind, texts, min_freq, max_vocab), tok_cfg.kind, WORD_SPECIALS)


def _train_subword(kind: str, texts: list[str], min_freq: int, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Special tokens come first, in SPECIAL_TOKENS order, so their ids match the word encoder's.
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="xxunk"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_freq,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="xxunk"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_freq, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; use spacy, wordpiece or bpe")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encoder_from_state(state: dict, itos: list[str], cache_dir=None, n_workers: int = 0):
    """The encoder a stage artifact was trained with (stored in its model.pt)."""
    if state.get("kind", "spacy") == "spacy":
        return WordEncoder(itos, state.get("lang", "en"), cache_dir, n_workers)
    from tokenizers import Tokenizer

    return SubwordEncoder(Tokenizer.from_str(state["json"]), state["kind"], Specials(**json.loads(state["specials"])))


def encoder_from_checkpoint(path: str | Path) -> SubwordEncoder:
    """The tokenizer saved beside a local Hugging Face checkpoint (`init_from`); never downloads."""
    path = Path(path).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise ArtifactError(f"{path}: no tokenizer.json; init_from needs a checkpoint folder saved with its "
                            "fast tokenizer (tokenizer.save_pretrained(folder))")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    named = _special_names(path)

    def token_id(*keys):
        for key in keys:
            if named.get(key) is not None and tok.token_to_id(named[key]) is not None:
                return tok.token_to_id(named[key])
        return None

    unk, pad = token_id("unk_token"), token_id("pad_token", "eos_token", "unk_token")
    if pad is None:
        raise ArtifactError(f"{path}: the tokenizer names no pad, eos or unk token")
    specials = Specials(unk if unk is not None else pad, pad, token_id("cls_token", "bos_token"),
                        token_id("mask_token"), 0)
    return SubwordEncoder(tok, "pretrained", specials)


def _special_names(path: Path) -> dict:
    names: dict = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        if (path / fname).is_file():
            for key, value in json.loads((path / fname).read_text()).items():
                if key.endswith("_token") and key not in names:
                    names[key] = value.get("content") if isinstance(value, dict) else value
    return names
