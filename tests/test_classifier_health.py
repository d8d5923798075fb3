"""Classifiers that learn: guards against the failures that once put every transformer cell at 50 %.

- Train-mode and eval-mode predictions of a trained classifier agree on the same reviews. A head
  whose normalisation behaves differently in evaluation (BatchNorm running statistics on pooled
  features that barely vary between reviews, with encoder dropout shifting them in training)
  predicts one class at evaluation while it trains fine.
- A classifier fitted on real reviews does not predict a single class on them.
- Missing encoder weights are reported, not silently left at their random initialisation.
- Skipping adaptation reports the model's own held-out scores, not a shifted history row.
"""
import json

import numpy as np
import pytest
import torch

from pipeline.artifacts import read_metrics
from pipeline.backbones import REGISTRY, get_backbone
from pipeline.config import ClassifyConfig, load_config
from pipeline.errors import ArtifactError
from pipeline.stages import adapt, classify, pretrain
from pipeline.stages.classify import build_model
from pipeline.text import WORD_SPECIALS
from tests.test_model_parts import tiny_arch

BACKBONES = sorted(REGISTRY)


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory, data_dir):
    """Per backbone: the smoke preset's stage 1 and an unadapted stage 2 (fast, real data)."""
    root, dirs = tmp_path_factory.mktemp("health"), {}
    for name in BACKBONES:
        cfg = load_config("smoke", [f"model.backbone={name}", "adapt.epochs=0", "adapt.frozen_epochs=0"])
        p = pretrain.run(cfg, root / name / "pretrain")
        dirs[name] = (p.path, adapt.run(cfg, p.path, root / name / "adapt").path)
    return dirs


def _fitted_classifier(name: str, adapt_dir: str, out_dir):
    """A classifier trained to fit 120 real reviews (several epochs, all layers), with its training items."""
    cfg = load_config("smoke", [f"model.backbone={name}", "classify.n_labels=120", "classify.n_test=40",
                                "classify.epochs_per_phase=[1,6]", "classify.lrs=[0.01,0.005]"])
    seen = {}
    original = classify.evaluate

    def keep_learner(learn, dl, classes):
        seen["learn"], seen["train_dl"] = learn, learn.dls.train
        return original(learn, dl, classes)
    classify.evaluate = keep_learner
    try:
        classify.run(cfg, adapt_dir, out_dir)
    finally:
        classify.evaluate = original
    return seen["learn"], seen["train_dl"]


@torch.no_grad()
def _predictions(model, batches, train_mode: bool) -> torch.Tensor:
    model.train(train_mode)
    preds = []
    for xb, _ in batches:
        if hasattr(model, "reset"):
            model.reset()
        torch.manual_seed(0)
        out = model(xb)
        preds.append((out[0] if isinstance(out, tuple) else out).argmax(dim=1))
    model.eval()
    return torch.cat(preds)


@pytest.mark.parametrize("name", BACKBONES)
def test_train_and_eval_predictions_agree_and_use_both_classes(name, lm_dirs, tmp_path):
    learn, train_dl = _fitted_classifier(name, lm_dirs[name][1], tmp_path / "classify")
    batches = list(train_dl.new(shuffle=False))
    in_eval = _predictions(learn.model, batches, train_mode=False)
    in_train = _predictions(learn.model, batches, train_mode=True)
    agreement = float((in_eval == in_train).float().mean())
    assert agreement >= 0.8, f"{name}: train/eval predictions agree on only {agreement:.0%} of the same reviews"
    share = float(in_eval.float().mean())
    assert 0.1 <= share <= 0.9, f"{name}: eval predicts class 1 for {share:.0%} of reviews it was fitted on"


@pytest.mark.parametrize("name", BACKBONES)
def test_missing_encoder_weights_are_reported(name):
    backbone, arch = get_backbone(name), tiny_arch(name)
    state = backbone.build_lm(arch).state_dict()
    encoder_key = next(k for k in state if backbone.lm_to_classifier({k: state[k]}))  # an LM weight the encoder uses
    blob = {"backbone": name, "arch": json.dumps(arch),
            "state_dict": {k: v for k, v in state.items() if k != encoder_key}}
    with pytest.raises(ArtifactError, match="missing"):
        build_model(blob, 2, ClassifyConfig(bptt=16), WORD_SPECIALS)
    blob["state_dict"] = state  # complete: the head is the only part that starts fresh
    build_model(blob, 2, ClassifyConfig(bptt=16), WORD_SPECIALS)


@pytest.mark.parametrize("name", ["awd_lstm", "bert"])
def test_skipped_adaptation_reports_its_own_held_out_scores(name, lm_dirs):
    metrics = read_metrics(lm_dirs[name][1])
    assert metrics["held_out_perplexity_after"] == pytest.approx(metrics["held_out_perplexity_before"], rel=1e-6)
    assert 0 <= metrics["held_out_accuracy_after"] <= 1
    assert np.isclose(metrics["held_out_accuracy_after"], metrics["held_out_accuracy_before"])
