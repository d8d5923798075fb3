"""Predictions from a finished run's classifier artifact.

Texts go through exactly what the classify stage's test evaluation runs: `classify.encode_texts`
(tokens cut to `classify.max_tokens` as in training, read in the direction the classifier was trained
in: its model file's config), the stage's batching loader (reviews of
similar length together) and `classify.class_probs`. So a review scores the same here as it did
in the evaluation. Texts are classified TEXTS_PER_STEP at a time, in batches: `predict_stream`
yields each step's results before it reads the next texts, so a large file streams through.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import torch

from pipeline.artifacts.layout import classifier_folder
from pipeline.artifacts.model_file import load_model_file
from pipeline.config import ClassifyConfig
from pipeline.data.corpora import MAX_DOC_CHARS, load_corpus
from pipeline.data.encoders import encoder_from_state
from pipeline.errors import DataError
from pipeline.models.direction import model_direction
from pipeline.stages.classify import build_model, class_probs, encode_texts, loader

TEXTS_PER_STEP = 256  # texts tokenized and classified together; results stream out step by step


def trained_classifier(folder: Path) -> tuple:
    """(model file, classify config, encoder, backbone, trained model) of a verified classify folder."""
    mf = load_model_file(folder, expect_kind="classifier")
    cc = ClassifyConfig(**mf.config["classify"])
    encoder = encoder_from_state(mf.tokenizer, mf.vocab)
    backbone, model = build_model(mf, len(mf.classes), cc, encoder.specials, load_encoder=False)
    model.load_state_dict(mf.state_dict)
    return mf, cc, encoder, backbone, model.eval()


class Classifier:
    """A run's classifier, ready to score texts: the model, its classes, encoder and batching."""

    def __init__(self, run: str | Path):
        from fastai.data.core import DataLoaders

        from pipeline.training.accel import resolve_precision
        from pipeline.training.learner import make_learner, pick_device

        self.model_file, self.cc, self.encoder, backbone, model = trained_classifier(classifier_folder(run))
        mf = self.model_file
        self.classes = list(mf.classes)
        self.direction = model_direction(mf.config)
        self.device = pick_device("auto")
        # the arithmetic the stage's evaluation used (its `precision` setting, resolved for this device)
        self.precision = precision = resolve_precision(mf.config.get("precision", "fp32"), backbone, self.device)
        self._loader = lambda items: loader(items, self.cc, False, self.device, self.encoder.specials.pad)
        placeholder = self._loader([(torch.zeros(1, dtype=torch.long), torch.tensor(0))])  # a Learner needs dls
        # No RecomputeBNStats: the saved BatchNorm statistics are the ones the test evaluation used.
        self.learn = make_learner(DataLoaders(placeholder, placeholder, device=self.device), model.eval(),
                                  backbone.classifier_splitter, backbone.classifier_callbacks(), [], self.cc.wd,
                                  self.device, precision=precision)

    def probs(self, texts: list[str]) -> torch.Tensor:
        """(n_texts, n_classes) probabilities, rows in the order of `texts`."""
        ids = encode_texts(texts, self.encoder, self.cc, "predict", self.direction, cache=False)
        probs, _ = class_probs(self.learn, self._loader([(x, torch.tensor(0)) for x in ids]))
        return probs


def check_text(text: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where} is empty: nothing to classify")
    if len(text) > MAX_DOC_CHARS:
        raise DataError(f"{where} has {len(text):,} characters, over the limit of {MAX_DOC_CHARS:,} "
                        "(pipeline.data.corpora.MAX_DOC_CHARS); split it into documents")
    return text


def predict_stream(run: str | Path, texts: Iterable[str], where=lambda i: f"text #{i + 1}") \
        -> Iterator[tuple[str, str, float]]:
    """(text, label, probability) for each text, a step of TEXTS_PER_STEP texts at a time.
    `where(i)` names the i-th text (0-based) in error messages ("text #3", "reviews.txt, line 3")."""
    classifier, numbered = None, enumerate(texts)
    while step := list(itertools.islice(numbered, TEXTS_PER_STEP)):
        batch = [check_text(text, where(i)) for i, text in step]
        classifier = classifier or Classifier(run)
        probs = classifier.probs(batch)
        best = probs.argmax(dim=1)
        for text, k, row in zip(batch, best.tolist(), probs):
            yield text, classifier.classes[k], float(row[k])


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")


def texts_from_file(source: str, text_col: str = "text") -> tuple[Iterable[str], Callable[[int], str]]:
    """The texts of `source` and how to name the i-th one: a column of a table file (read and checked
    by the corpus loader), else one text per line, read lazily ("-" is stdin)."""
    if source == "-":
        return _lines(sys.stdin.buffer, "stdin"), lambda i: f"stdin, line {i + 1}"
    path = Path(source).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES:
        frame = load_corpus(str(path), None, text_col=text_col)
        return frame["text"].tolist(), lambda i: f"{path}, row {i} (0-based data row)"
    if not path.is_file():
        raise DataError(f"{path}: not found (expected a text file, one text per line, or {', '.join(TABLE_SUFFIXES)})")
    return _lines(path.open("rb"), str(path)), lambda i: f"{path}, line {i + 1}"


def _lines(stream: BinaryIO, name: str) -> Iterator[str]:
    n = 0
    with stream:
        for n, raw in enumerate(stream, start=1):
            if b"\x00" in raw:
                raise DataError(f"{name}, line {n}: NUL byte, a binary (or UTF-16) file, not UTF-8 text")
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{name}, line {n}: not UTF-8 (byte {raw[err.start]:#04x})") from None
            yield text.rstrip("\r\n")
    if n == 0:  # exit 0 with no output would read as "classified, nothing to say"
        raise DataError(f"{name}: empty, no texts to classify (one text per line)")


def predict(run: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) for each text."""
    texts = list(texts)
    for i, text in enumerate(texts):  # every text checked before the model loads
        check_text(text, f"text #{i + 1}")
    return [(label, prob) for _, label, prob in predict_stream(run, texts)]
