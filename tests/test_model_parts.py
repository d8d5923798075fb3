"""Embedding transfer, layer groups, discriminative LRs and schedules (tiny shapes)."""
import numpy as np
import pytest
import torch

from pipeline.backbones import REGISTRY, get_backbone
from pipeline.config import ClassifyConfig, ModelConfig
from pipeline.errors import ConfigError
from pipeline.training import discriminative
from pipeline.transfer import transfer_embeddings

TINY = ModelConfig(emb_sz=8, n_hid=16, n_layers=3)


def test_transfer_keeps_known_rows_and_means_new_ones():
    old_itos, new_itos = ["xxunk", "a", "b"], ["xxunk", "b", "c", "d"]
    weight = torch.arange(6, dtype=torch.float).reshape(3, 2)
    bias = torch.tensor([1.0, 2.0, 6.0])
    state, known = transfer_embeddings({"w": weight, "b": bias, "other": torch.ones(1)}, old_itos, new_itos, ("w", "b"))
    assert known == 2
    assert torch.equal(state["w"][0], weight[0]) and torch.equal(state["w"][1], weight[2])
    assert torch.allclose(state["w"][2], weight.mean(0)) and torch.allclose(state["w"][3], weight.mean(0))
    assert torch.allclose(state["b"], torch.tensor([1.0, 6.0, 3.0, 3.0]))
    assert torch.equal(state["other"], torch.ones(1))


def test_transfer_rejects_mismatched_vocab():
    with pytest.raises(ValueError, match="rows"):
        transfer_embeddings({"w": torch.zeros(2, 2)}, ["a", "b", "c"], ["a"], ("w",))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_builds_and_splits(name):
    backbone = get_backbone(name)
    lm = backbone.build_lm(40, TINY)
    lm_groups = backbone.lm_splitter(lm)
    assert sum(len(g) for g in lm_groups) == len(list(lm.parameters()))
    state = lm.state_dict()
    assert all(state[k].shape[0] == 40 for k in backbone.vocab_keys)
    clas = backbone.build_classifier(40, 3, TINY, ClassifyConfig(bptt=10, max_len=50))
    clas_groups = backbone.classifier_splitter(clas)
    assert sum(len(g) for g in clas_groups) == len(list(clas.parameters()))
    missing, unexpected = clas.load_state_dict(backbone.lm_to_classifier(state), strict=False)
    assert not unexpected and all(not k.startswith("0.") for k in missing)  # only the head is new
    out = clas(torch.randint(2, 40, (2, 25)))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 3)


def test_awd_lstm_groups_are_embedding_layers_head():
    backbone = get_backbone("awd_lstm")
    clas = backbone.build_classifier(40, 2, TINY, ClassifyConfig(bptt=10))
    assert len(backbone.classifier_splitter(clas)) == TINY.n_layers + 2
    assert len(backbone.lm_splitter(backbone.build_lm(40, TINY))) == TINY.n_layers + 1


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="available"):
        get_backbone("lstm9000")


def test_discriminative_lrs_divide_by_decay_per_group():
    lrs = discriminative(0.01, 5, 2.6)
    assert lrs[-1] == 0.01
    assert np.allclose(np.array(lrs[1:]) / np.array(lrs[:-1]), 2.6)


def _tiny_classifier_learner(cc: ClassifyConfig, train_items: list, valid_items: list):
    from fastai.data.core import DataLoaders
    from fastai.metrics import accuracy

    from pipeline.stages.classify import loader
    from pipeline.training import make_learner

    backbone = get_backbone("awd_lstm")
    dls = DataLoaders(loader(train_items, cc, True, "cpu"), loader(valid_items, cc, False, "cpu"), device="cpu")
    return make_learner(dls, backbone.build_classifier(30, 2, TINY, cc), backbone.classifier_splitter,
                        backbone.callbacks(), [accuracy], 0.0, torch.device("cpu"))


def test_gradual_unfreezing_trains_only_the_unfrozen_groups():
    from pipeline.stages.classify import gradual_unfreezing
    from pipeline.training import EpochLog

    # phase 1 trains the head only; phase 2 has 0 epochs
    cc = ClassifyConfig(bptt=10, max_len=50, bs=4, epochs_per_phase=[1, 0], lrs=[1e-2, 1e-2])
    items = [(torch.randint(2, 30, (12,)), torch.tensor(i % 2)) for i in range(8)]
    learn = _tiny_classifier_learner(cc, items, items)
    learn.create_opt()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    gradual_unfreezing(learn, cc, EpochLog())
    after = learn.model.state_dict()
    assert torch.equal(before["0.module.encoder.weight"], after["0.module.encoder.weight"])
    assert torch.equal(before["0.module.rnns.2.module.weight_ih_l0"], after["0.module.rnns.2.module.weight_ih_l0"])
    assert not torch.equal(before["1.layers.1.2.weight"], after["1.layers.1.2.weight"])


def test_stlr_schedule_shape():
    """Slanted triangular: starts at lr/32, peaks at lr after ~10 % of steps, decays back down."""
    from pipeline.training import EpochLog, fit

    cc = ClassifyConfig(bptt=10, max_len=50, bs=2)
    items = [(torch.randint(2, 30, (8,)), torch.tensor(i % 2)) for i in range(60)]
    learn = _tiny_classifier_learner(cc, items, items[:4])
    fit(learn, 1, 0.01, "stlr", "stlr", EpochLog())
    lrs = np.array(learn.recorder.lrs)
    peak = int(lrs.argmax())
    assert lrs.max() == pytest.approx(0.01, rel=0.1)
    assert lrs[0] == pytest.approx(0.01 / 32, rel=0.5)
    assert 0 < peak < len(lrs) * 0.25 and lrs[-1] < lrs.max() / 10
