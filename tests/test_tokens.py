"""Tokenizer rules, the token cache and vocabulary building."""
import numpy as np
import pytest

from pipeline.data import word_tokens
from pipeline.data.word_tokens import SPECIAL_TOKENS, UNK, build_vocab, numericalize, tokenize_cached, tokenize_texts


def words(corpus, i: int) -> list[str]:
    """Document i of a tokenized corpus as token strings."""
    return [corpus.types[t] for t in corpus.doc(i)]


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
    monkeypatch.setattr(word_tokens, "_stream_chunks", lambda *a: pytest.fail("tokenized again"))
    second = tokenize_cached(texts, tmp_path, n_workers=0)
    assert second.types == first.types and np.array_equal(second.ids, first.ids)
    assert len(second) == 2 and words(second, 0)[0] == "xxbos"


def test_cache_key_depends_on_text_and_settings():
    assert word_tokens.token_cache_key(["a"], "en") != word_tokens.token_cache_key(["b"], "en")
    assert word_tokens.token_cache_key(["a"], "en") != word_tokens.token_cache_key(["a"], "de")
    assert word_tokens.token_cache_key(["ab"], "en") != word_tokens.token_cache_key(["a", "b"], "en")


def test_parallel_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(word_tokens, "PARALLEL_MIN_DOCS", 2)
    monkeypatch.setattr(word_tokens, "CHUNK_CHARS", 40)  # several chunks, more than the 4 in flight
    texts = [f"Review number {i} is OK! " * (i % 3 + 1) for i in range(12)]
    parallel = tokenize_cached(texts, tmp_path / "a", n_workers=2)
    serial = tokenize_cached(texts, tmp_path / "b", n_workers=0)
    assert [words(parallel, i) for i in range(12)] == [words(serial, i) for i in range(12)] == tokenize_texts(texts)
    assert parallel.types == serial.types and np.array_equal(parallel.ids, serial.ids)


def test_streamed_arrays_match_the_in_memory_definition(tmp_path, monkeypatch):
    """The on-disk format is unchanged: types by count (ties: first occurrence), ids, offsets, counts."""
    from collections import Counter

    monkeypatch.setattr(word_tokens, "CHUNK_CHARS", 30)
    monkeypatch.setattr(word_tokens, "REWRITE_BLOCK", 7)
    texts = ["The cat sat on the mat.", "A dog! A dog? The end.", "Cats and dogs, dogs and cats."] * 3
    docs = tokenize_texts(texts)
    counts = Counter(t for d in docs for t in d)
    types = [t for t, _ in counts.most_common()]
    corpus = tokenize_cached(texts, tmp_path, n_workers=0)
    assert corpus.types == types
    assert corpus.counts.tolist() == [counts[t] for t in types]
    assert corpus.ids.tolist() == [types.index(t) for d in docs for t in d]
    assert corpus.offsets.tolist() == np.cumsum([0] + [len(d) for d in docs]).tolist()
    assert isinstance(corpus.ids, np.memmap)  # ids stay on disk
    assert sorted(p.name for p in next((tmp_path / "tokens").iterdir()).iterdir()) == \
        ["counts.npy", "ids.npy", "manifest.json", "offsets.npy", "types.json"]  # manifest: sha256 of each


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
    from pipeline.data.word_tokens import detokenize

    assert detokenize(["xxbos", "xxmaj", "this", "is", "xxup", "great", "!"]) == "This is GREAT !"


@pytest.mark.parametrize("damage", ["truncate-ids", "flip-byte", "missing-file", "older-entry-cut-short"])
def test_damaged_token_cache_is_tokenized_again(tmp_path, damage):
    """A truncated cache file made np.load fail with `mmap length is greater than file size`; a damaged
    entry is now detected by its sha256 (like a stage artifact) and rebuilt, never loaded."""
    texts = [f"review number {i}, rather good" for i in range(20)]
    first = tokenize_cached(texts, tmp_path, n_workers=0)
    expected = np.array(first.ids)  # a copy: first.ids maps the file damaged below
    folder = tmp_path / "tokens" / word_tokens.token_cache_key(texts, "en")
    ids = folder / "ids.npy"
    if damage == "truncate-ids":
        ids.write_bytes(ids.read_bytes()[: ids.stat().st_size // 2])
    elif damage == "flip-byte":
        data = bytearray(ids.read_bytes())
        data[-3] ^= 0xFF
        ids.write_bytes(bytes(data))
    elif damage == "missing-file":
        (folder / "offsets.npy").unlink()
    else:  # an entry from before caches had manifests, cut short
        (folder / "manifest.json").unlink()
        ids.write_bytes(ids.read_bytes()[:-8])
    again = tokenize_cached(texts, tmp_path, n_workers=0)
    assert again.types == first.types and np.array_equal(again.ids, expected)
    assert np.array_equal(again.offsets, first.offsets)


def test_document_over_spacy_max_length_tokenizes():
    """spaCy refuses texts over nlp.max_length (1,000,000 characters, E088); documents up to
    pipeline.data.corpora.MAX_DOC_CHARS pass the loaders, so they must tokenize."""
    text = "Fine words. " * 100_000  # 1.2 M characters
    toks = tokenize_texts([text])[0]
    assert toks[0] == "xxbos" and toks.count("words") == 100_000


def test_intact_entry_from_before_manifests_is_kept(tmp_path, monkeypatch):
    """An upgrade must not tokenize every cached corpus again: an older entry whose arrays fit together
    is kept and given a manifest."""
    texts = [f"review number {i}, rather good" for i in range(20)]
    first = tokenize_cached(texts, tmp_path, n_workers=0)
    folder = tmp_path / "tokens" / word_tokens.token_cache_key(texts, "en")
    (folder / "manifest.json").unlink()
    monkeypatch.setattr(word_tokens, "_stream_chunks", lambda *a: pytest.fail("tokenized again"))
    again = tokenize_cached(texts, tmp_path, n_workers=0)
    assert again.types == first.types and (folder / "manifest.json").exists()
