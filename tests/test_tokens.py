"""Tokenizer rules, the token cache and vocabulary building."""
import numpy as np
import pytest

from pipeline import tokens
from pipeline.tokens import (SPECIAL_TOKENS, UNK, build_vocab, numericalize, tokenize_cached, tokenize_texts)


def test_fastai_rules_applied():
    toks = tokenize_texts(["This is GREAT!!!! <br /><br />I loved it it it it"])[0]
    assert toks[0] == "xxbos"
    assert toks[1:3] == ["xxmaj", "this"]
    assert "xxup" in toks and "great" in toks
    assert "xxrep" in toks  # "!!!!" -> xxrep 4 !
    assert "xxwrep" in toks  # "it it it it" -> xxwrep 4 it
    assert not any("<br" in t or "br" == t for t in toks)
    assert all(t == t.lower() for t in toks)


def test_special_tokens_survive_tokenization():
    toks = tokenize_texts(["xxunk and xxmaj stay whole"])[0]
    assert "xxunk" in toks and "xxmaj" in toks


def test_cache_is_reused(tmp_path, monkeypatch):
    texts = ["A first review.", "Another one, rather longer than the first."]
    first = tokenize_cached(texts, tmp_path, n_workers=0)
    monkeypatch.setattr(tokens, "_tokenize_parallel", lambda *a: pytest.fail("tokenized again"))
    second = tokenize_cached(texts, tmp_path, n_workers=0)
    assert second.types == first.types and np.array_equal(second.ids, first.ids)
    assert len(second) == 2 and second.doc_tokens(0)[0] == "xxbos"


def test_cache_key_depends_on_text_and_settings():
    assert tokens.token_cache_key(["a"], "en") != tokens.token_cache_key(["b"], "en")
    assert tokens.token_cache_key(["a"], "en") != tokens.token_cache_key(["a"], "de")
    assert tokens.token_cache_key(["ab"], "en") != tokens.token_cache_key(["a", "b"], "en")


def test_parallel_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "PARALLEL_MIN_DOCS", 2)
    texts = [f"Review number {i} is OK!" for i in range(8)]
    assert tokens._tokenize_parallel(texts, "en", 2) == tokenize_texts(texts)


def test_vocab_and_numericalize(tmp_path):
    corpus = tokenize_cached(["the cat the dog the end", "the cat"], tmp_path, n_workers=0)
    itos = build_vocab(corpus, min_freq=2, max_vocab=60000)
    assert itos[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert "the" in itos and "cat" in itos and "dog" not in itos  # dog occurs once
    assert len(itos) % 8 == 0
    ids, offsets = numericalize(corpus, itos)
    first = ids[offsets[0]:offsets[1]]
    assert [itos[i] for i in first][:3] == ["xxbos", "the", "cat"]
    assert ids[offsets[0] + 4] == UNK  # "dog"


def test_max_vocab_caps_size(tmp_path):
    corpus = tokenize_cached([" ".join(f"w{i}" for i in range(100)) * 2], tmp_path, n_workers=0)
    assert len(build_vocab(corpus, 1, 20)) == 24  # 20 real entries, padded to a multiple of 8


def test_detokenize_restores_case_for_display():
    from pipeline.lm import detokenize

    assert detokenize(["xxbos", "xxmaj", "this", "is", "xxup", "great", "!"]) == "This is GREAT !"
