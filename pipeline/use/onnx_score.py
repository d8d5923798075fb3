"""Score texts with a classifier exported by `ulmfit export --format onnx`, without ulmfit-flow.

This file is copied as score.py into every ONNX export folder; it imports nothing of ulmfit-flow.
It needs onnxruntime and numpy, plus the tokenizer the model was trained with: `tokenizers` for a
bpe / wordpiece / pretrained tokenizer (tokenizer.json), or spaCy and fastai's rules for words.

    python score.py "A moving, beautifully acted film." "Two hours I will never get back."
    python score.py --file reviews.txt          # one text per line; one JSON line out per text

    from score import Scorer
    probs = Scorer("path/to/export").probs(["A moving film."])   # (n_texts, n_classes), config.json's classes

A text goes through the steps the classify stage used: its tokens (the bos id first), cut to
`max_tokens` (head, or head and tail), reversed for a backward model (bos kept first), then padded
at the end with `pad_id` in batches of similar length.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 64  # texts per onnxruntime call


class Scorer:
    def __init__(self, folder: str | Path = HERE):
        import onnxruntime

        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.classes = self.config["classes"]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: not each graph node it could not fold
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.encode = _encoder(folder, self.config)

    def ids(self, texts: list[str]) -> list[np.ndarray]:
        cfg = self.config
        return [_orient(_truncate(np.asarray(ids, dtype=np.int64), cfg), cfg) for ids in self.encode(texts)]

    def probs(self, texts: list[str]) -> np.ndarray:
        docs = self.ids(texts)
        out = np.empty((len(docs), len(self.classes)), dtype=np.float32)
        by_length = np.argsort([-len(doc) for doc in docs], kind="stable")
        for start in range(0, len(docs), BATCH):
            rows = by_length[start:start + BATCH]
            batch = np.full((len(rows), len(docs[rows[0]])), self.config["pad_id"], dtype=np.int64)
            for i, row in enumerate(rows):
                batch[i, :len(docs[row])] = docs[row]
            out[rows] = self.session.run(["probs"], {"input_ids": batch})[0]
        return out


def _encoder(folder: Path, cfg: dict):
    """texts -> token ids, bos first, as the stages encoded them."""
    tok = cfg["tokenizer"]
    if tok["kind"] == "spacy":
        from fastai.text.core import SpacyTokenizer, TokenizeWithRules, defaults

        spacy_tok = SpacyTokenizer(tok["lang"], special_toks=tok["special_tokens"])
        spacy_tok.pipe.__self__.max_length = sys.maxsize  # only the tokenizer runs: linear in the text
        words = TokenizeWithRules(spacy_tok, rules=defaults.text_proc_rules)  # its `lowercase` rule adds xxbos
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        stoi = {token: i for i, token in enumerate(vocab)}
        return lambda texts: [[stoi.get(t, cfg["unk_id"]) for t in tokens] for tokens in words(list(texts))]
    from tokenizers import Tokenizer

    subwords = Tokenizer.from_file(str(folder / "tokenizer.json"))
    head = [] if cfg["bos_id"] is None else [cfg["bos_id"]]
    return lambda texts: [head + e.ids for e in subwords.encode_batch(list(texts), add_special_tokens=False)]


def _truncate(ids: np.ndarray, cfg: dict) -> np.ndarray:
    n = cfg["max_tokens"]
    if n is None or len(ids) <= n:
        return ids
    if cfg["truncation"] == "head":
        return ids[:n]
    head = n // 4  # head_tail: the first quarter and the last three quarters (Sun et al. 2019)
    return np.concatenate([ids[:head], ids[len(ids) - (n - head):]])


def _orient(ids: np.ndarray, cfg: dict) -> np.ndarray:
    if cfg["direction"] == "forward" or len(ids) < 2:
        return ids
    keep = 1 if ids[0] == cfg["bos_id"] else 0  # a backward model reads bos first, then the text reversed
    return np.concatenate([ids[:keep], ids[keep:][::-1]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to score")
    parser.add_argument("--file", help="a UTF-8 text file, one text per line")
    args = parser.parse_args(argv)
    texts = list(args.texts)
    if args.file:
        texts += Path(args.file).read_text(encoding="utf-8").splitlines()
    if not texts:
        parser.error("no texts: give them as arguments or with --file")
    scorer = Scorer()
    for text, row in zip(texts, scorer.probs(texts)):
        best = int(row.argmax())
        print(json.dumps({"text": text, "label": scorer.classes[best], "probability": round(float(row[best]), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
