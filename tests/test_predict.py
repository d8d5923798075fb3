"""`ulmfit predict` and pipeline.use.predict: the classify stage's own inference path, batched and streamed.

Issue 11: predict ignored `classify.max_tokens` / `truncation`, so a long review scored differently in
predict than in the stage's evaluation; `predict --run R -` classified the text "-". Issue 13: texts
were classified one at a time.
"""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from flows.cli import main
from pipeline.artifacts.stage_folder import read_metrics
from pipeline.config import load_config
from pipeline.data.corpora import MAX_DOC_CHARS, load_corpus
from pipeline.use import predict as predict_module
from pipeline.use.predict import Classifier, predict, predict_stream
from tests.cli_errors import one_error


@pytest.fixture(scope="module")
def run_dir(smoke_run):
    return smoke_run  # the session's shared smoke run: these tests only read it


@pytest.fixture(scope="module")
def classifier(run_dir):
    return Classifier(run_dir)


@pytest.fixture(scope="module")
def reviews(data_dir):
    """Test reviews of every length: the 40 shortest and the 40 longest of 2,000."""
    texts = load_corpus("imdb", "test", data_dir=data_dir)["text"].sample(2000, random_state=0)
    by_length = texts.iloc[np.argsort(texts.str.len().to_numpy())].tolist()
    return by_length[:40] + by_length[-40:]


def _forward(classifier: Classifier, ids: np.ndarray) -> torch.Tensor:
    """The model on one review, in the arithmetic the stage evaluated in (bf16 on a CPU with native bf16)."""
    model = classifier.learn.model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=classifier.precision == "bf16"):
        out = model(torch.from_numpy(ids)[None])
    return torch.softmax((out[0] if isinstance(out, tuple) else out)[0].float(), dim=-1)


def test_predict_reads_a_long_review_as_training_did(classifier, run_dir, reviews):
    """The issue's case: a 1,340-token review scored 0.6051 in predict and 0.5959 as evaluated."""
    cc = classifier.cc
    assert cc.max_tokens is not None and cc.truncation == "head"
    scored = []  # (how much the cut changes the score, text, score as trained) for the longest reviews
    for text in reviews[-10:]:
        ids = classifier.encoder.encode([text], cache=False)[0]
        assert len(ids) > 3 * cc.max_tokens
        as_trained, whole = _forward(classifier, ids[:cc.max_tokens]), _forward(classifier, ids)
        scored.append((float((as_trained - whole).abs().max()), text, as_trained))
    change, text, as_trained = max(scored, key=lambda item: item[0])
    assert change > 1e-4, "the test needs a review whose cut changes the score"
    label, prob = predict(run_dir, [text])[0]
    assert label == classifier.classes[int(as_trained.argmax())]
    assert prob == pytest.approx(float(as_trained.max()), abs=1e-5)


def test_predict_agrees_with_the_stage_evaluation(run_dir, data_dir):
    """One code path: predicting the stage's own test sample gives its reported accuracy and confusion matrix."""
    from pipeline.stages.classify_data import load_splits

    cfg = load_config("smoke")
    test = load_splits(cfg.classify, data_dir, cfg.seed).test
    metrics = read_metrics(run_dir / "classify")
    labels = [label for label, _ in predict(run_dir, test["text"].tolist())]
    classes = metrics["classes"]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for truth, guess in zip(test["label"], labels):
        confusion[classes.index(truth), classes.index(guess)] += 1
    assert confusion.tolist() == metrics["confusion_matrix"]
    assert np.mean(np.array(labels) == test["label"].to_numpy()) == pytest.approx(metrics["test_accuracy"])


def test_batches_score_like_single_texts(run_dir, reviews):
    texts = reviews[:6] + reviews[-6:]
    together = predict(run_dir, texts)
    alone = [predict(run_dir, [t])[0] for t in texts]
    assert [label for label, _ in together] == [label for label, _ in alone]
    assert np.allclose([p for _, p in together], [p for _, p in alone], atol=1e-5)


def test_results_stream_a_step_at_a_time(run_dir, monkeypatch):
    monkeypatch.setattr(predict_module, "TEXTS_PER_STEP", 2)
    pulled = []

    def texts():
        for i in range(7):
            pulled.append(i)
            yield f"review {i}: a fine film" if i % 2 else f"review {i}: a dull film"

    results = predict_stream(run_dir, texts())
    first = next(results)
    assert first[0] == "review 0: a dull film" and len(pulled) == 2  # nothing read beyond the first step
    assert len([first, *results]) == 7


# --- the command line: texts, stdin, files --------------------------------------------------------

def _rows(capsys) -> list[dict]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def test_dash_reads_stdin_one_text_per_line(run_dir, capsys, monkeypatch):
    """`predict --run R -` classified the text "-"."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"A moving film.\nTwo hours lost.\n")))
    assert main(["predict", "--run", str(run_dir), "-"]) == 0
    rows = _rows(capsys)
    assert [r["text"] for r in rows] == ["A moving film.", "Two hours lost."]
    assert all(r["label"] in ("neg", "pos") for r in rows)


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet", "jsonl"])
def test_file_of_texts(run_dir, tmp_path, capsys, kind):
    texts = ["A moving film.", "Two hours, lost.", "Fine, said the critic"]
    path = tmp_path / f"texts.{kind}"
    frame = pd.DataFrame({"id": [1, 2, 3], "review": texts})
    if kind == "txt":
        path.write_text("\n".join(texts) + "\n")
    elif kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    extra = [] if kind == "txt" else ["--text-col", "review"]
    assert main(["predict", "--run", str(run_dir), "--file", str(path), *extra]) == 0
    assert [r["text"] for r in _rows(capsys)] == texts


def test_blank_line_in_a_file_is_named(run_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("good\n\nbad\n")
    line = one_error(capsys, ["predict", "--run", str(run_dir), "--file", str(tmp_path / "t.txt")])
    assert "t.txt, line 2 is empty" in line


def test_file_and_texts_together_is_one_error(run_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("good\n")
    assert "not both" in one_error(capsys, ["predict", "--run", str(run_dir), "--file", str(tmp_path / "t.txt"), "x"])


def test_two_megabyte_text_is_classified_in_one_line(run_dir, capsys):
    """spaCy refused it (E088: over nlp.max_length) with a traceback."""
    text = "A long and moving film. " * 84_000  # 2 MB
    assert main(["predict", "--run", str(run_dir), text]) == 0
    rows = _rows(capsys)
    assert len(rows) == 1 and rows[0]["label"] in ("neg", "pos") and len(rows[0]["text"]) == len(text)


def test_text_over_the_document_limit_is_one_error(run_dir, capsys):
    line = one_error(capsys, ["predict", "--run", str(run_dir), "fine", "x" * (MAX_DOC_CHARS + 1)])
    assert "text #2" in line and "over the limit" in line
