"""ULMFiT's forward + backward ensemble: two classifiers' class probabilities averaged on the same
test reviews (the paper's best IMDb result: 4.58 % error vs 5.30 % for the forward model alone).

`model.direction = "both"` asks for it. The flow then runs every registered stage twice, once per
direction (`pipeline.artifacts.layout.chains`), and the ensemble step last:

    <run>/pretrain           adapt           classify            model.direction = forward
    <run>/pretrain-backward  adapt-backward  classify-backward   model.direction = backward
    <run>/ensemble/          metrics.json  card.md  test_predictions.csv  manifest.json

Each classifier wrote its per-review test probabilities (`pipeline.artifacts.probabilities`); the ensemble checks
that both scored the same reviews and averages them. It is cached like a stage: its key is the
content (manifest fingerprint) of the classifier folders and this module's code version, and it is
kept in the stage store. `ulmfit ensemble RUN_A RUN_B` combines the classifiers of two existing
runs the same way (two directions, or e.g. two seeds).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.cards import confusion_table, markdown_table, metric_table
from pipeline.artifacts.layout import ENSEMBLE
from pipeline.artifacts.probabilities import (
    PREDICTIONS_FILE,
    predictions_table,
    prob_columns,
    read_predictions,
    table_bytes,
)
from pipeline.artifacts.stage_folder import fingerprint, read_metrics, write_files
from pipeline.artifacts.store import keep, restore
from pipeline.config import RunConfig
from pipeline.errors import ArtifactError
from pipeline.stages.registry import code_version

HEADLINE = ("test_accuracy", "test accuracy")


def ensemble_key(folders: list[Path]) -> str:
    parts = {"members": [fingerprint(Path(f)) for f in folders], "code": code_version(__name__)}
    return f"{ENSEMBLE}-{hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]}"


def ensure(folders: list[Path], out_dir: str | Path, cfg: RunConfig | None = None) -> tuple[str, dict]:
    """("Cached" or "Completed", metrics) of the ensemble of these classifier folders in `out_dir`:
    already there, linked in from the stage store (`cfg.cache_dir`), or computed now and kept there."""
    cfg = cfg or RunConfig()
    out, key = Path(out_dir), ensemble_key(folders)
    if restore(out, key, cfg):
        return "Cached", read_metrics(out)
    metrics = write_ensemble(folders, out, key)
    keep(out, key, cfg)
    return "Completed", metrics


@dataclass
class Member:
    folder: Path
    predictions: pd.DataFrame
    classes: list[str]
    metrics: dict

    @property
    def direction(self) -> str:
        return self.metrics.get("direction", "forward")

    def probs(self) -> np.ndarray:
        return self.predictions[prob_columns(self.classes)].to_numpy(dtype=np.float64)


def members(folders: list[Path]) -> list[Member]:
    """The classifiers' test predictions, checked to be of the same reviews, labels and classes."""
    if len(folders) < 2:
        raise ArtifactError("an ensemble needs at least two classifiers")
    found = [Member(Path(f), *read_predictions(f), read_metrics(f)) for f in folders]
    first = found[0]
    for other in found[1:]:
        differs = ("classes" if other.classes != first.classes
                   else "test reviews" if not other.predictions["row"].equals(first.predictions["row"])
                   else "true labels" if not other.predictions["label"].equals(first.predictions["label"])
                   else "test source" if other.metrics.get("test_source") != first.metrics.get("test_source")
                   else None)
        if differs:
            raise ArtifactError(f"{first.folder} and {other.folder} have different {differs}: an ensemble "
                                "averages classifiers scored on the same test reviews (same classify corpus, "
                                "test_corpus, n_test and seed)")
    return found


def accuracy(probs: np.ndarray, labels: pd.Series, classes: list[str]) -> float:
    truth = labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
    return float((probs.argmax(axis=1) == truth).mean())


def member_labels(found: list[Member]) -> list[str]:
    """What each classifier is called in the metrics: its direction, numbered when two share one."""
    directions = [m.direction for m in found]
    if len(set(directions)) == len(directions):
        return directions
    return [f"{d}_{i + 1}" for i, d in enumerate(directions)]


def write_ensemble(folders: list[Path], out_dir: Path, cache_key: str = "") -> dict:
    """Average the classifiers' test probabilities; write metrics, card and predictions to `out_dir`."""
    found = members(folders)
    first, classes = found[0], found[0].classes
    probs = sum(m.probs() for m in found) / len(found)
    labels = first.predictions["label"]
    singles = {name: accuracy(m.probs(), labels, classes) for name, m in zip(member_labels(found), found)}
    acc, best = accuracy(probs, labels, classes), max(singles.values())
    truth, preds = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(), probs.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (truth, preds), 1)
    metrics = {"test_accuracy": acc, "test_error": 1 - acc, "test_size": len(labels),
               **{f"{name}_test_accuracy": value for name, value in singles.items()},
               "gain_over_best_single": acc - best, "params": sum(int(m.metrics.get("params", 0)) for m in found),
               "test_source": first.metrics.get("test_source"), "classes": classes,
               "confusion_matrix": confusion.tolist(),
               "members": [{"name": name, "direction": m.direction, "test_accuracy": singles[name],
                            "params": int(m.metrics.get("params", 0)), "backbone": m.metrics.get("backbone"),
                            "fingerprint": fingerprint(m.folder)} for name, m in zip(singles, found)]}
    table = predictions_table(first.predictions["row"].tolist(), labels.tolist(), classes, probs)
    write_files(out_dir, {"metrics.json": json.dumps(metrics, indent=2).encode(), "card.md": _card(metrics).encode(),
                          PREDICTIONS_FILE: table_bytes(table)}, cache_key)
    return metrics


def _card(metrics: dict) -> str:
    rows = [(m["name"], m["direction"], f"{m['test_accuracy']:.4f}", f"{m['params']:,}") for m in metrics["members"]]
    rows.append(("ensemble (mean probability)", "", f"{metrics['test_accuracy']:.4f}", f"{metrics['params']:,}"))
    shown = {k: v for k, v in metrics.items() if k not in ("members", "classes", "confusion_matrix")}
    return "\n".join([
        "# Ensemble: classifiers' probabilities averaged", "",
        f"The class probabilities of {len(metrics['members'])} classifiers averaged on the same "
        f"{metrics['test_size']} test reviews of {metrics['test_source']}; the predicted class is the one of "
        "highest mean probability. ULMFiT's best IMDb result is such an ensemble of a forward and a backward "
        "classifier.", "",
        markdown_table(["classifier", "direction", "test accuracy", "params"], rows), "",
        metric_table(shown), "",
        "## Confusion matrix (rows = true, columns = predicted)", "",
        confusion_table(classes=metrics["classes"], confusion=metrics["confusion_matrix"]), ""])
