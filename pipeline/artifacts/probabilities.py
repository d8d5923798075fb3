"""A classifier's per-review test probabilities: the file the classify stage writes into its folder
and the ensemble (pipeline/use/ensemble.py) reads.

    test_predictions.csv    row                 the test row's number, as in ModelFile.samples["test"]
                            label               its true label
                            prob_<class> ...    one column per class, in the classifier's class order

Probabilities are written as float64 text that reads back to the same numbers, so an ensemble
computed from two files is exactly the average of what the two classifiers produced.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.stage_folder import verify_folder
from pipeline.errors import ArtifactError

PREDICTIONS_FILE = "test_predictions.csv"
PROB_PREFIX = "prob_"


def prob_columns(classes: list) -> list[str]:
    return [f"{PROB_PREFIX}{c}" for c in classes]


def predictions_table(rows: list[int], labels: list, classes: list, probs: np.ndarray) -> pd.DataFrame:
    """One line per test review: its row number, true label and class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(rows), len(classes)) or len(labels) != len(rows):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(rows)} rows and {len(classes)} classes")
    frame = pd.DataFrame({"row": np.asarray(rows, dtype=np.int64), "label": [str(x) for x in labels]})
    return pd.concat([frame, pd.DataFrame(probs, columns=prob_columns(classes))], axis=1)


def table_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)  # float64 written with repr precision: reads back exactly
    return buffer.getvalue().encode()


def read_predictions(folder: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(the table, the class names) of a classify folder, checked against its manifest."""
    folder = Path(folder)
    if not (folder / PREDICTIONS_FILE).is_file():
        raise ArtifactError(f"{folder}: no {PREDICTIONS_FILE} (classify stages write it since the "
                            "forward + backward ensemble was added); rerun its classify stage")
    verify_folder(folder, [PREDICTIONS_FILE])
    frame = pd.read_csv(folder / PREDICTIONS_FILE, dtype={"label": str})
    classes = [c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX)]
    if list(frame.columns[:2]) != ["row", "label"] or not classes:
        raise ArtifactError(f"{folder / PREDICTIONS_FILE}: malformed (expected row, label, prob_<class> columns)")
    return frame, classes
