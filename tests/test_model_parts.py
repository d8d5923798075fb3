"""Embedding transfer, layer groups, discriminative LRs and schedules (tiny shapes)."""
import numpy as np
import pytest
import torch

from pipeline.config import ClassifyConfig, ModelConfig
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.errors import ConfigError
from pipeline.models.backbones import REGISTRY, AwdLstmConfig, get_backbone
from pipeline.models.heads import Standardize, use_head
from pipeline.models.hf_backbones import BertSizes, TransformerConfig
from pipeline.models.vocab_transfer import transfer_embeddings
from pipeline.training.learner import discriminative

SMALL = dict(d_model=16, n_layers=3, n_heads=2, d_ff=32, max_positions=64)
TINY = ModelConfig(awd_lstm=AwdLstmConfig(emb_sz=8, n_hid=16, n_layers=3), gpt=TransformerConfig(**SMALL),
                   bert=BertSizes(**SMALL))


def tiny_arch(name: str, vocab_sz: int = 40) -> dict:
    return get_backbone(name).make_arch(vocab_sz, TINY.model_copy(update={"backbone": name}), WORD_SPECIALS)


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
    backbone, arch = get_backbone(name), tiny_arch(name)
    lm = backbone.build_lm(arch)
    lm_groups = backbone.lm_splitter(lm)
    assert sum(len(g) for g in lm_groups) == len(list(lm.parameters()))  # every parameter, once
    state = lm.state_dict()
    assert all(state[k].shape[0] == 40 for k in backbone.vocab_keys)
    clas = backbone.build_classifier(arch, 3, ClassifyConfig(bptt=10, max_len=50), WORD_SPECIALS)
    clas_groups = backbone.classifier_splitter(clas)
    assert sum(len(g) for g in clas_groups) == len(list(clas.parameters()))
    wanted = backbone.lm_to_classifier(state)
    missing, unexpected = clas.load_state_dict(wanted, strict=False)
    assert wanted and not unexpected and not [k for k in missing if k in wanted]
    assert all(k.split(".")[0] in ("1", "head") for k in missing)  # only the head is new
    out = clas(torch.randint(10, 40, (2, 25)))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_layer_groups_are_embeddings_blocks_head(name):
    """n layers -> LM: n + 1 groups (last = embeddings/decoder); classifier: n + 2 (embeddings, layers, head)."""
    backbone, arch = get_backbone(name), tiny_arch(name)
    clas = backbone.build_classifier(arch, 2, ClassifyConfig(bptt=10), WORD_SPECIALS)
    assert len(backbone.classifier_splitter(clas)) == 3 + 2
    use_head(backbone.classifier_head(clas), "lp_ft", 2, 1.0)  # the linear head is the same last group
    groups = backbone.classifier_splitter(clas)
    assert len(groups) == 3 + 2 and sum(len(g) for g in groups) == len(list(clas.parameters()))
    assert {id(p) for p in groups[-1]} >= {id(p) for p in backbone.classifier_head(clas).parameters()}
    lm = backbone.build_lm(arch)
    groups = backbone.lm_splitter(lm)
    assert len(groups) == 3 + 1
    embedding = lm.state_dict()[backbone.vocab_keys[0]]
    assert any(p is embedding or p.data_ptr() == embedding.data_ptr() for p in groups[-1])


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
    from pipeline.training.learner import make_learner

    backbone = get_backbone("awd_lstm")
    dls = DataLoaders(loader(train_items, cc, True, "cpu", 1), loader(valid_items, cc, False, "cpu", 1), device="cpu")
    return make_learner(dls, backbone.build_classifier(tiny_arch("awd_lstm", 30), 2, cc, WORD_SPECIALS),
                        backbone.classifier_splitter, backbone.classifier_callbacks(), [accuracy], 0.0,
                        torch.device("cpu"))


def test_gradual_unfreezing_trains_only_the_unfrozen_groups():
    from pipeline.stages.classify import gradual_unfreezing
    from pipeline.training.learner import EpochLog

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
    from pipeline.training.learner import EpochLog, fit

    cc = ClassifyConfig(bptt=10, max_len=50, bs=2)
    items = [(torch.randint(2, 30, (8,)), torch.tensor(i % 2)) for i in range(60)]
    learn = _tiny_classifier_learner(cc, items, items[:4])
    fit(learn, 1, 0.01, "stlr", "stlr", EpochLog())
    lrs = np.array(learn.recorder.lrs)
    peak = int(lrs.argmax())
    assert lrs.max() == pytest.approx(0.01, rel=0.1)
    assert lrs[0] == pytest.approx(0.01 / 32, rel=0.5)
    assert 0 < peak < len(lrs) * 0.25 and lrs[-1] < lrs.max() / 10


def test_a_diverged_loss_stops_training_with_one_line():
    """A learning rate far too high turns the loss into NaN/inf; fastai trained on and the stage reported
    perplexity nan (or failed later, sampling from NaN probabilities). Now one TrainingDiverged line."""
    from fastai.data.core import DataLoaders

    from pipeline.training.guards import TrainingDiverged
    from pipeline.training.learner import EpochLog, fit, make_learner

    torch.manual_seed(0)
    items = [(torch.randn(4) * 1e10, torch.tensor(i % 2)) for i in range(64)]  # large inputs: logits overflow
    dls = DataLoaders.from_dsets(items, items[:8], bs=8, num_workers=0)
    learn = make_learner(dls, torch.nn.Linear(4, 2), lambda m: [list(m.parameters())], [], [], 0.0,
                         torch.device("cpu"))
    with pytest.raises(TrainingDiverged) as err:
        fit(learn, 2, 1e30, "one_cycle", "phase1", EpochLog("phase1"))  # one step: logits of 1e39, inf in float32
    message = str(err.value)
    assert "\n" not in message and "phase1: the training loss became" in message and "lower it" in message
    assert "epoch 1" in message


def _reviews(lengths: list[int], vocab_sz: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.cat([torch.tensor([2]), torch.randint(WORD_SPECIALS.n_reserved, vocab_sz, (n - 1,), generator=g)])
            for n in lengths]


def _batched(docs: list[torch.Tensor], cc: ClassifyConfig) -> torch.Tensor:
    """One batch of `docs` as the classify stage batches them (longest first)."""
    from pipeline.stages.classify import loader

    batches = list(loader([(doc, torch.tensor(0)) for doc in docs], cc, False, "cpu", WORD_SPECIALS.pad, bs=len(docs)))
    return batches[0][0].as_subclass(torch.Tensor)


def _class_probs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return torch.softmax(out[0] if isinstance(out, tuple) else out, dim=-1)


# a batch whose second-shortest review ends before the last chunk that the shortest one's tail reaches:
# fastai pads to the longest review only, and its SentenceEncoder then cut that tail (fastai issue 3379)
LENGTHS = [130, 101, 99, 85, 3]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_review_scores_the_same_alone_and_in_a_batch(name):
    cc = ClassifyConfig(bptt=20, max_len=50)  # the pooling window cuts the longer reviews
    torch.manual_seed(0)
    model = get_backbone(name).build_classifier(tiny_arch(name), 2, cc, WORD_SPECIALS).eval()
    docs = _reviews(LENGTHS)
    in_batch = _class_probs(model, _batched(docs, cc))
    for row, doc in enumerate(docs):  # the batch keeps the loader's longest-first order, as LENGTHS is
        torch.testing.assert_close(in_batch[row], _class_probs(model, _batched([doc], cc))[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("max_len, head", [(50, "ulmfit"), (1000, "ulmfit"), (50, "lp_ft")])
def test_the_export_scorer_gives_the_classifiers_probabilities(name, max_len, head):
    """pipeline.models.scorers (the graph `ulmfit export --format onnx` writes) on the stage's batches, and on
    the same reviews padded at the end, as an ONNX user pads them; with either head."""
    cc = ClassifyConfig(bptt=20, max_len=max_len, head=head)
    torch.manual_seed(0)
    backbone = get_backbone(name)
    model = backbone.build_classifier(tiny_arch(name), 2, cc, WORD_SPECIALS).eval()
    use_head(backbone.classifier_head(model), head, 2, cc.drop_mult)
    for module in model.modules():  # normalisation statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
        if isinstance(module, Standardize):
            module.mean.normal_()
            module.inv_sd.uniform_(0.5, 2.0)
    scorer = backbone.scorer(model, cc, WORD_SPECIALS).eval()
    docs = _reviews(LENGTHS)
    batch = _batched(docs, cc)
    expected = _class_probs(model, batch)
    padded_at_end = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True, padding_value=WORD_SPECIALS.pad)
    with torch.no_grad():
        torch.testing.assert_close(scorer(batch), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(scorer(padded_at_end), expected, atol=1e-6, rtol=0)
