"""benchmarks/curve.py: tune-log rows become curve rows, seeds are pooled per cell, the gain is over the twin."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks.curve import PROBE_ONLY, main

R = ["pretrain.epochs=0", "adapt.epochs=0", "adapt.frozen_epochs=0"]


def _tune_row(name: str, overrides: list[str], test: float, probe: float) -> dict:
    return {"name": name, "preset": "cpu", "overrides": overrides, "valid_accuracy": test - 0.01,
            "test_accuracy": test, "probe_test_accuracy": probe, "probe_valid_accuracy": probe,
            "tfidf_test_accuracy": 0.85, "lm_train_tokens": {"pretrain": 1_000_000, "adapt": 2_000_000},
            "adapt_ppl": 100.0}


@pytest.fixture
def log(tmp_path):
    rows = [_tune_row("T-s42", [], 0.80, 0.68), _tune_row("T-s1", ["classify.seed=1"], 0.82, 0.70),
            _tune_row("R-s42", R, 0.78, 0.66), _tune_row("R-s1", R + ["classify.seed=1"], 0.76, 0.66),
            _tune_row("P", ["classify.epochs_per_phase=[0,0,0,0]", "adapt.max_docs=16000"], 0.5, 0.69),
            _tune_row("T100", ["classify.n_labels=100", "classify.min_steps=200"], 0.60, 0.58)]
    path = tmp_path / "tune.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_log_becomes_the_table_the_csv_and_the_plot(tmp_path, log):
    csv, png = tmp_path / "curve.csv", tmp_path / "curve.png"
    text = main(["--log", str(log), "--csv", str(csv), "--png", str(png)])
    frame = pd.read_csv(csv)
    assert len(frame) == 6 and png.stat().st_size > 10_000
    by_name = frame.set_index("name")
    # tokens read = tokens x epochs: the cpu preset reads each stage once, the twin reads nothing
    assert by_name.loc["T-s42", "lm_tokens"] == 3_000_000 and by_name.loc["R-s1", "lm_tokens"] == 0
    assert by_name.loc["T-s1", "seed"] == 1 and by_name.loc["T-s42", "seed"] == 42
    assert by_name.loc["P", "recipe"] == PROBE_ONLY and pd.isna(by_name.loc["P", "test_accuracy"])
    assert by_name.loc["T100", "recipe"] == "classify.min_steps=200" and by_name.loc["T100", "n_labels"] == 100
    # two seeds pooled: transferred 81 ± 1.41 (valid 80), twin 77 ± 1.41, so the gain is +4.00 ± 1.41
    line = next(row for row in text.splitlines() if row.startswith("| 1,000 | preset | 3.00 M"))
    assert "| 2 | 80.00 | 81.00 ± 1.41 | +4.00 ± 1.41 |" in line


def test_rows_of_the_same_name_are_replaced_and_others_kept(tmp_path, log):
    csv, png = tmp_path / "curve.csv", tmp_path / "curve.png"
    main(["--log", str(log), "--csv", str(csv), "--png", str(png)])
    again = tmp_path / "again.jsonl"
    again.write_text(json.dumps(_tune_row("T-s42", [], 0.90, 0.68)) + "\n")
    main(["--log", str(again), "--csv", str(csv), "--png", str(png)])
    frame = pd.read_csv(csv).set_index("name")
    assert len(frame) == 6 and frame.loc["T-s42", "test_accuracy"] == pytest.approx(0.90)
    assert frame.loc["T-s42", "source"] == str(again) and frame.loc["T-s1", "source"] == str(log)
