"""Predictions from a finished run's classifier artifact.

Texts are encoded by the classify stage's own `encode_texts`: cut to `classify.max_tokens` and read
in the direction the classifier was trained in (its model file's config), as in its test evaluation."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import is_complete, load_model_file
from pipeline.config import ClassifyConfig
from pipeline.direction import model_direction
from pipeline.errors import ArtifactError, DataError
from pipeline.stages.classify import build_model, encode_texts
from pipeline.text import encoder_from_state


def classifier_dir(run: str | Path) -> Path:
    run = Path(run).expanduser()
    folder = run / "classify" if (run / "classify").is_dir() else run
    if not run.exists():
        raise ArtifactError(f"{run}: no such run directory")
    if not is_complete(folder):
        raise ArtifactError(f"{run}: no complete classify stage here (expected {run}/classify/manifest.json); "
                            "run `ulmfit run` first")
    return folder


def load_classifier(run: str | Path):
    """(model in eval mode, its ModelFile, its text encoder) of a run's classify stage."""
    mf = load_model_file(classifier_dir(run), expect_kind="classifier")
    cc = ClassifyConfig(**mf.config["classify"])
    encoder = encoder_from_state(mf.tokenizer, mf.vocab)
    _, model = build_model(mf, len(mf.classes), cc, encoder.specials, load_encoder=False)
    model.load_state_dict(mf.state_dict)
    return model.eval(), mf, encoder


@torch.no_grad()
def predict(run: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """(label, probability) for each text."""
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        raise DataError(f"text #{empty[0] + 1} is empty: nothing to classify")
    model, mf, encoder = load_classifier(run)
    cc, direction = ClassifyConfig(**mf.config["classify"]), model_direction(mf.config)
    results = []
    for doc in encode_texts(list(texts), encoder, cc, "predict", direction):
        ids = doc[None]
        if hasattr(model, "reset"):
            model.reset()
        out = model(ids)
        probs = torch.softmax((out[0] if isinstance(out, tuple) else out)[0].float(), dim=-1)
        best = int(probs.argmax())
        results.append((mf.classes[best], float(probs[best])))
    return results
