"""The `full` preset at its real sizes, on CPU, before anyone rents a GPU (issue 22, part 3).

Every backbone at the `full` preset's sizes (AWD-LSTM 400/1152/3, the transformers 512 x 6 layers)
takes a training step of its language model at the full vocabulary (60,000) and the full bptt (70), on
8 sequences, and of its classifier; and every stage of the preset runs at those sizes on tiny data
slices (a few batches each). The full batch of 64 sequences is a GPU's work: `benchmarks/gpu_check.py`
trains the `full` preset's batches on the GPU (on 2 CPU cores its 1 GB of logits took ~50 s per backbone). Shapes, memory and settings at full size are exercised on
every CI run. Stage 1 reads WikiText-2 here: CI's data folder holds WikiText-103's valid and test
splits only, and a download of its 180 MB train split is not what a test should do.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.models.backbones import REGISTRY, get_backbone

BACKBONES = list(REGISTRY)
SEQUENCES = 8  # of the preset's batch of 64: the shapes are the same, a GPU's work is not (module docstring)
# Stage 1 only evaluates and stage 2 trains one unfrozen epoch: a full-size LM training step is already
# test_a_training_step_at_full_size's, and stage 2 runs the stage's own loop at that size.
TINY = ["pretrain.corpus=wikitext-2", "pretrain.max_docs=2", "pretrain.max_valid_docs=1", "pretrain.epochs=0",
        "adapt.max_docs=24", "adapt.max_valid_docs=4", "adapt.frozen_epochs=0", "adapt.epochs=1",
        "classify.n_labels=16", "classify.n_valid=8", "classify.n_test=16", "classify.bs=16",
        "classify.max_tokens=160", "classify.epochs_per_phase=[1,0,0,1]", "classify.baselines=false"]


@pytest.mark.parametrize("name", BACKBONES)
def test_a_training_step_at_full_size(name):
    cfg = load_config("full", [f"model.backbone={name}"])
    backbone = get_backbone(name)
    arch = backbone.make_arch(cfg.pretrain.max_vocab, cfg.model, WORD_SPECIALS)
    torch.manual_seed(0)
    lm = backbone.build_lm(arch).train()
    ids = torch.randint(WORD_SPECIALS.n_reserved, cfg.pretrain.max_vocab, (SEQUENCES, cfg.pretrain.bptt))
    out = lm(ids)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (SEQUENCES, cfg.pretrain.bptt, cfg.pretrain.max_vocab)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
    grads = [p.grad for p in lm.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    classifier = backbone.build_classifier(arch, 2, cfg.classify, WORD_SPECIALS).train()
    reviews = torch.randint(WORD_SPECIALS.n_reserved, cfg.pretrain.max_vocab, (8, 2 * cfg.classify.bptt + 5))
    out = classifier(reviews)
    scores = out[0] if isinstance(out, tuple) else out
    assert scores.shape == (8, 2)
    torch.nn.functional.cross_entropy(scores.float(), torch.arange(8) % 2).backward()


@pytest.mark.slow  # about a minute per backbone on 2 cores
@pytest.mark.parametrize("name", BACKBONES)
def test_every_stage_of_the_full_preset_runs_at_full_size(name, tmp_path, data_dir, monkeypatch):
    from pipeline.artifacts.model_file import load_model_file
    from pipeline.artifacts.stage_folder import read_metrics
    from pipeline.stages import adapt, pretrain
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage
    from pipeline.validate import check_run

    # One sample prompt, not three: each is 20 full-size forward passes, about a sixth of this test's time
    # for the AWD-LSTM (cProfile); sampling has tests of its own at small sizes.
    for stage_module in (pretrain, adapt):
        monkeypatch.setattr(stage_module, "SAMPLE_PROMPTS", stage_module.SAMPLE_PROMPTS[:1])

    cfg = load_config("full", [f"model.backbone={name}", *TINY])
    check_run(cfg, tmp_path / "run")
    upstream = None
    for stage in ("pretrain", "adapt", "classify"):
        upstream = run_stage(make_context(stage, cfg, tmp_path / "run" / stage, upstream)).path
    sizes = load_model_file(tmp_path / "run" / "classify").arch
    expected = cfg.model.sizes().model_dump()
    assert {k: sizes[k] for k in expected if k in sizes} == {k: v for k, v in expected.items() if k in sizes}
    metrics = read_metrics(tmp_path / "run" / "classify")
    assert metrics["test_size"] == 16 and 0 <= metrics["test_accuracy"] <= 1
