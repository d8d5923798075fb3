"""Typed flow parameters: what the UI form sends becomes validated config overrides."""
import typing

import pytest

from flows.params import (
    AdaptSettings,
    BackboneName,
    ClassifySettings,
    Preset,
    PretrainSettings,
    StageName,
    typed_overrides,
)
from pipeline.config import available_presets, load_config
from pipeline.errors import ConfigError
from pipeline.models.backbones import REGISTRY
from pipeline.stages.registry import stage_names


def test_literals_match_the_project():
    assert sorted(typing.get_args(Preset)) == available_presets()
    assert typing.get_args(StageName) == stage_names() == ("pretrain", "adapt", "classify")
    assert typing.get_args(BackboneName) == tuple(REGISTRY) and "awd_lstm" in REGISTRY


def test_typed_settings_become_overrides_that_validate():
    overrides = typed_overrides("awd_lstm", PretrainSettings(epochs=0), AdaptSettings(),
                                ClassifySettings(n_labels=100, lrs=[0.03, 0.01], schedule="stlr"))
    assert overrides == ["model.backbone=awd_lstm", "pretrain.epochs=0", "classify.n_labels=100",
                         'classify.lrs=[0.03, 0.01]', 'classify.schedule="stlr"']
    cfg = load_config("smoke", overrides)
    assert cfg.pretrain.epochs == 0 and cfg.classify.n_labels == 100 and cfg.classify.schedule == "stlr"
    assert cfg.classify.lrs == [0.03, 0.01] and cfg.adapt == load_config("smoke").adapt


def test_empty_settings_keep_the_preset():
    assert typed_overrides(None, PretrainSettings(), AdaptSettings(), ClassifySettings()) == []


def test_out_of_range_and_unknown_fields_are_rejected():
    with pytest.raises(ValueError):
        ClassifySettings(n_labels=1)
    with pytest.raises(ValueError):
        PretrainSettings(epoch=3)


def test_mismatched_phases_fail_with_a_config_error():
    with pytest.raises(ConfigError, match="epochs_per_phase"):
        load_config("smoke", typed_overrides(None, None, None, ClassifySettings(lrs=[0.1])))


def test_backbone_parameter_selects_the_registry_entry():
    from flows.params import AdaptSettings, ClassifySettings, PretrainSettings, typed_overrides
    from pipeline.config import load_config

    for name in ("gpt", "bert"):
        sets = typed_overrides(name, PretrainSettings(), AdaptSettings(), ClassifySettings())
        assert load_config("smoke", sets).model.backbone == name
    assert load_config("smoke", typed_overrides(None, PretrainSettings(), AdaptSettings(), ClassifySettings())).model.backbone == "awd_lstm"
