"""A backbone and two stages registered from outside pipeline/, the way a new one is added: a size model
plus one registry entry (the backbone); one module with `run(ctx)` plus one registry line (each stage):
`lm_check` in the middle of the chain, between adapt and classify (tests/plugin_mid_stage.py), and `export`
at its end (tests/plugin_stage.py). tests/test_registries.py checks that they show up everywhere."""
from __future__ import annotations

import dataclasses

from pydantic import Field

from pipeline.config_base import SizeSection
from pipeline.models.backbones import REGISTRY as BACKBONES
from pipeline.models.backbones import register as register_backbone
from pipeline.stages.registry import Stage, unregister
from pipeline.stages.registry import register as register_stage


class TinySizes(SizeSection):
    """Size section of the test backbone: an AWD-LSTM under another name, with its own defaults."""

    emb_sz: int = Field(16, gt=0, description="Embedding size.")
    n_hid: int = Field(24, gt=0, description="Hidden size.")
    n_layers: int = Field(1, gt=0, description="Recurrent layers.")


def install() -> None:
    register_backbone(dataclasses.replace(BACKBONES["awd_lstm"], name="tiny", description="a test backbone",
                                          sizes=TinySizes))
    register_stage(Stage("lm_check", "tests.plugin_mid_stage", "adapt", ("n_weights", "LM weights"), lambda cfg: 0,
                         "lm"), before="classify")
    register_stage(Stage("export", "tests.plugin_stage", "classify", ("n_weights", "classifier weights"),
                         lambda cfg: 0, "classifier"))


def uninstall() -> None:
    BACKBONES.pop("tiny", None)
    unregister("export")
    unregister("lm_check")
