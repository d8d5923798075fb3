"""model.pt: `ModelFile`, the one schema of the weights file every stage writes and stages, predict, export
and the notebooks read. Saved with plain types only and loaded with `torch.load(weights_only=True)` after
its sha256 is checked against the folder's manifest (`pipeline.artifacts.stage_folder`): nothing a user hands us is
ever unpickled with code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts.stage_folder import MODEL_FILE, save_torch, verify_folder
from pipeline.errors import ArtifactError

MODEL_FORMAT = 1  # bump when ModelFile's fields change meaning; older or newer files are refused
MODEL_KINDS = ("lm", "classifier")


@dataclass(frozen=True)
class ModelFile:
    """The one schema of model.pt, written by every stage and read by stages, predict and notebooks."""

    kind: str  # "lm" or "classifier"
    stage: str  # the stage that wrote it
    backbone: str  # pipeline.models.backbones registry name
    arch: dict  # the backbone's architecture description (what build_lm / build_classifier take)
    config: dict  # pipeline.config.stage_config: seed, model, tokenizer and the stage's own section
    state_dict: dict  # parameter name -> CPU tensor
    vocab: list  # token strings, in id order
    tokenizer: dict  # pipeline.data.encoders encoder state
    classes: list = field(default_factory=list)  # classifier: label names in output order
    samples: dict = field(default_factory=dict)  # classifier: row indices of its train / valid / test samples
    data_dir: str | None = None  # classifier: the data folder those rows were read from

    def save(self, path: Path) -> None:
        # Plain types only (weights_only loading); arch and config are JSON text, whatever they hold.
        blob = {f.name: getattr(self, f.name) for f in fields(self)}
        save_torch(blob | {"format": MODEL_FORMAT, "arch": json.dumps(self.arch, default=str),
                           "config": json.dumps(self.config, default=str)}, path)

    @classmethod
    def from_blob(cls, blob: Any, path: Path) -> "ModelFile":
        if not isinstance(blob, dict) or "state_dict" not in blob:
            raise ArtifactError(f"{path}: not a ulmfit-flow model file")
        if blob.get("format") != MODEL_FORMAT:
            raise ArtifactError(f"{path}: model file format {blob.get('format')!r}, this version reads "
                                f"{MODEL_FORMAT}; rerun the stage to rewrite it")
        names = {f.name for f in fields(cls)}
        try:
            known = {k: v for k, v in blob.items() if k in names}
            model = cls(**known | {"arch": json.loads(blob["arch"]), "config": json.loads(blob["config"])})
        except (TypeError, KeyError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{path}: malformed model file ({err})") from None
        weights = model.state_dict if isinstance(model.state_dict, dict) else {"": None}
        if (model.kind not in MODEL_KINDS or not isinstance(model.vocab, list)
                or not all(isinstance(v, torch.Tensor) for v in weights.values())):
            raise ArtifactError(f"{path}: malformed model file (its kind, vocabulary or weights)")
        return model


def load_model_file(folder: Path, expect_kind: str | None = None) -> ModelFile:
    """Load model.pt safely (weights_only) after checking it against the manifest, and check its kind."""
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise ArtifactError(f"{folder}: no {MODEL_FILE}; is this a stage folder of a ulmfit run?")
    verify_folder(folder, [MODEL_FILE])  # a flipped byte is reported here, not deep inside torch
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / corrupted / foreign pickles
        raise ArtifactError(f"{path}: cannot be loaded safely ({type(err).__name__}: {err})") from None
    model = ModelFile.from_blob(blob, path)
    if expect_kind and model.kind != expect_kind:
        raise ArtifactError(f"{path}: holds a {model.kind!r} model, expected {expect_kind!r}")
    return model


def cpu_state(model: torch.nn.Module) -> dict:
    """A detached CPU copy of a module's weights (what ModelFile.state_dict holds)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
