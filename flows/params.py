"""Typed flow parameters: what the Prefect UI renders as a form (dropdowns, number fields, defaults).

Each stage's settings are the fields users commonly change; a field left empty (None) keeps the
preset's value. Everything else is reachable through the free-form `overrides` list
(`section.field=value`, as with `ulmfit run --set`). Typed settings become overrides first, so a
free-form override of the same field wins.
"""
from __future__ import annotations

import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import available_presets
from pipeline.models.backbones import REGISTRY as BACKBONES
from pipeline.stages.registry import stage_names

# The UI's dropdowns: read from the presets folder and the registries when the flows are imported.
Preset = Literal[tuple(available_presets())]
BackboneName = Literal[tuple(BACKBONES)]
StageName = Literal[stage_names()]
Schedule = Literal["one_cycle", "stlr"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_overrides(self, section: str) -> list[str]:
        return [f"{section}.{name}={json.dumps(value)}"
                for name, value in self.model_dump(exclude_none=True).items()]


class PretrainSettings(_Settings):
    """Stage 1 (language model on WikiText). Empty fields keep the preset's value."""

    epochs: Optional[int] = Field(None, ge=0, description="Training epochs; 0 = no pretraining (random init).")
    lr: Optional[float] = Field(None, gt=0, description="Peak learning rate.")
    max_docs: Optional[int] = Field(None, gt=1, description="Sample this many Wikipedia articles.")
    max_vocab: Optional[int] = Field(None, ge=16, description="Vocabulary size cap.")


class AdaptSettings(_Settings):
    """Stage 2 (language model fine-tuned on the target domain). Empty fields keep the preset's value."""

    frozen_epochs: Optional[int] = Field(None, ge=0, description="Epochs training only embeddings + decoder.")
    epochs: Optional[int] = Field(None, ge=0, description="Epochs with all layers unfrozen.")
    lr: Optional[float] = Field(None, gt=0, description="Peak LR of the top layer group when unfrozen.")
    max_docs: Optional[int] = Field(None, gt=1, description="Sample this many domain documents.")


class ClassifySettings(_Settings):
    """Stage 3 (classifier on the adapted encoder). Empty fields keep the preset's value."""

    n_labels: Optional[int] = Field(None, gt=1, description="Labeled training examples (balanced).")
    n_test: Optional[int] = Field(None, gt=1, description="Test sample size (balanced).")
    epochs_per_phase: Optional[list[int]] = Field(None, description="Gradual unfreezing: epochs of each phase.")
    lrs: Optional[list[float]] = Field(None, description="Peak LR of each phase (same length as epochs_per_phase).")
    min_steps: Optional[int] = Field(None, gt=0, description="Few labels: scale every phase's epochs until the schedule takes at least this many optimizer steps.")
    schedule: Optional[Schedule] = Field(None, description="LR schedule within each phase.")
    drop_mult: Optional[float] = Field(None, ge=0, description="Dropout multiplier of the classifier.")
    max_tokens: Optional[int] = Field(None, gt=1, description="Truncate reviews to their first N tokens.")


SETTINGS = {"pretrain": PretrainSettings, "adapt": AdaptSettings, "classify": ClassifySettings}


def settings_values(cfg) -> dict:
    """The typed settings as a resolved config holds them: what a preset's form opens with."""
    values = {}
    for section, model in SETTINGS.items():
        resolved = getattr(cfg, section).model_dump(mode="json")
        values[section] = {name: resolved[name] for name in model.model_fields}
    return values


def typed_overrides(backbone: Optional[str], pretrain: Optional[PretrainSettings], adapt: Optional[AdaptSettings],
                    classify: Optional[ClassifySettings]) -> list[str]:
    """The typed parameters as `section.field=value` overrides (empty ones left out)."""
    out = [f"model.backbone={backbone}"] if backbone else []
    for section, settings in zip(SETTINGS, (pretrain, adapt, classify)):
        if settings is not None:
            out += settings.to_overrides(section)
    return out
