"""Transformer backbones: masking, causality, matched sizes, pooling, subword tokenizers, init_from."""
import numpy as np
import pytest
import torch

from pipeline.config import ClassifyConfig, load_config
from pipeline.data.encoders import WORD_SPECIALS, encoder_from_checkpoint, encoder_from_state, fit_encoder
from pipeline.errors import ArtifactError
from pipeline.models.backbones import REGISTRY, get_backbone
from pipeline.models.hf_backbones import pool
from pipeline.training.masking import IGNORE, lm_accuracy, mask_tokens
from tests.test_model_parts import tiny_arch

VOCAB = 1000


def test_masking_selects_15_percent_then_80_10_10():
    x = torch.randint(10, VOCAB, (256, 512), generator=torch.Generator().manual_seed(0))
    x[:, :8] = WORD_SPECIALS.pad  # padding is never selected
    corrupted, targets = mask_tokens(x, VOCAB, WORD_SPECIALS.mask, WORD_SPECIALS.pad, 10,
                                     torch.Generator().manual_seed(1))
    selected = targets != IGNORE
    real = x != WORD_SPECIALS.pad
    assert not selected[~real].any()
    assert selected[real].float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(targets[selected], x[selected])  # targets are the original tokens
    masked = (corrupted == WORD_SPECIALS.mask) & selected
    kept = (corrupted == x) & selected
    randomised = selected & ~masked & ~kept
    n = selected.sum().item()
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.01)
    # a random replacement can draw the original token (p = 1/990): "kept" is 10 % plus a hair
    assert kept.sum().item() / n == pytest.approx(0.1, abs=0.01)
    assert randomised.sum().item() / n == pytest.approx(0.1, abs=0.01)
    assert (corrupted[randomised] >= 10).all()  # random tokens are never special tokens
    assert torch.equal(corrupted[~selected], x[~selected])  # unselected positions untouched


def test_masked_loss_and_accuracy_count_selected_positions_only():
    targets = torch.full((2, 6), IGNORE)
    targets[0, 1], targets[1, 4] = 5, 7
    logits = torch.zeros(2, 6, 10)
    logits[0, 1, 5] = 10.0  # right
    logits[1, 4, 2] = 10.0  # wrong
    logits[0, 0, 9] = 99.0  # an unselected position: must not matter
    assert lm_accuracy(logits, targets).item() == pytest.approx(0.5)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 10), targets.view(-1))
    selected = torch.nn.functional.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE])
    assert loss.item() == pytest.approx(selected.item())


def test_gpt_is_causal():
    backbone = get_backbone("gpt")
    model = backbone.build_lm(tiny_arch("gpt")).eval()
    ids = torch.randint(10, 40, (1, 12))
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1 - 10) % 30 + 10
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-5)  # earlier positions do not see the future
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_bert_sees_both_directions():
    model = get_backbone("bert").build_lm(tiny_arch("bert")).eval()
    ids = torch.randint(10, 40, (1, 12))
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1 - 10) % 30 + 10
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, :8], model(changed)[0, :8])


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_transformer_sizes_match_the_lstm_within_20_percent(preset, name):
    cfg = load_config(preset)
    vocab = cfg.pretrain.max_vocab

    def params(backbone):
        b = get_backbone(backbone)
        arch = b.make_arch(vocab, cfg.model.model_copy(update={"backbone": backbone}), WORD_SPECIALS)
        return sum(p.numel() for p in b.build_lm(arch).parameters())

    assert params(name) == pytest.approx(params("awd_lstm"), rel=0.2)


def test_pooling_ignores_padding():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    assert torch.equal(pool(hidden, mask, "first")[0], hidden[0, 1])
    assert torch.equal(pool(hidden, mask, "last")[0], hidden[0, 2])
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, 1:3].mean(0))
    assert torch.equal(pool(hidden, mask, "max")[0], hidden[0, 2])  # not the padding's larger hidden[0, 3]
    concat = pool(hidden, mask, "concat")
    assert concat.shape == (2, 6) and torch.equal(concat[0, 2:4], hidden[0, 2])


@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_chunked_classifier_reads_every_chunk_and_ignores_padding_chunks(name):
    """A long review is encoded chunk by chunk; the last chunk changes the prediction, and a
    review padded at the front by whole chunks gets the same output as the unpadded one."""
    torch.manual_seed(0)
    clas = get_backbone(name).build_classifier(tiny_arch(name), 2, ClassifyConfig(bptt=8, pooling="mean"),
                                               WORD_SPECIALS).eval()
    ids = torch.randint(10, 40, (1, 30))
    padded = torch.cat([torch.full((1, 16), WORD_SPECIALS.pad), ids], dim=1)
    tail = ids.clone()
    tail[0, -1] = (ids[0, -1] + 1 - 10) % 30 + 10
    with torch.no_grad():
        assert torch.allclose(clas(ids), clas(padded), atol=1e-5)
        assert not torch.allclose(clas(ids), clas(tail))


def test_head_tail_truncation_keeps_both_ends():
    from pipeline.stages.classify import truncate

    ids = np.arange(100)
    assert list(truncate(ids, ClassifyConfig(max_tokens=8))) == list(range(8))
    kept = truncate(ids, ClassifyConfig(max_tokens=8, truncation="head_tail"))
    assert list(kept) == [0, 1] + list(range(94, 100))
    assert list(truncate(ids[:5], ClassifyConfig(max_tokens=8, truncation="head_tail"))) == list(range(5))


TEXTS = ["The film was wonderful, truly wonderful.", "A dull and boring movie!", "xxmaj not my kind of film"] * 20


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_subword_tokenizer_trains_encodes_and_round_trips(kind, smoke_cfg):
    tok_cfg = smoke_cfg.tokenizer.model_copy(update={"kind": kind})
    encoder = fit_encoder(tok_cfg, TEXTS, 1, 200)
    assert encoder.itos[:3] == ["xxunk", "xxpad", "xxbos"] and encoder.specials.mask == 9
    docs = encoder.encode(["The film was boring."])
    assert docs[0][0] == WORD_SPECIALS.bos and len(docs[0]) > 3
    assert "film" in encoder.decode(docs[0]).lower()
    again = encoder_from_state(encoder.state(), encoder.itos)  # what stages 2-3 do
    assert list(again.encode(["The film was boring."])[0]) == list(docs[0])
    assert not again.refits_on_target


def _tiny_checkpoint(folder, name):
    """A Hugging Face checkpoint folder as a user would download it: weights, config, fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    encoder = fit_encoder(load_config("smoke").tokenizer.model_copy(update={"kind": "wordpiece"}), TEXTS, 1, 120)
    backbone = get_backbone(name)
    model = backbone.build_lm(tiny_arch(name, len(encoder.itos)))
    model.hf.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=encoder.tokenizer, unk_token="xxunk", pad_token="xxpad",
                            cls_token="xxbos", bos_token="xxbos", mask_token="xxmask").save_pretrained(folder)
    return model, encoder


@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_init_from_loads_a_local_checkpoint_and_its_tokenizer(tmp_path, name):
    model, encoder = _tiny_checkpoint(tmp_path, name)
    loaded, arch, tok = get_backbone(name).load_checkpoint(tmp_path, load_config("smoke"))
    assert tok.itos == encoder.itos
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert arch["vocab_size"] == len(encoder.itos)
    tok = encoder_from_checkpoint(tmp_path)
    assert tok.itos == encoder.itos and tok.specials.pad == 1 and tok.specials.mask == 9 and tok.specials.bos == 2


def test_init_from_rejects_folders_that_are_not_checkpoints(tmp_path):
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        encoder_from_checkpoint(tmp_path)
    with pytest.raises(ArtifactError, match="init_from"):
        get_backbone("gpt").load_checkpoint(tmp_path, load_config("smoke"))


def test_reading_on_from_the_state_gives_the_logits_of_reading_the_whole_text():
    """AWD-LSTM samples one token a step from its own state (`read_on`); each step's logits are those of
    re-reading the whole text, and sampling leaves a clean state behind."""
    from pipeline.training.lm import generate

    backbone = get_backbone("awd_lstm")
    cfg = load_config("smoke")
    arch = backbone.make_arch(40, cfg.model, WORD_SPECIALS)
    torch.manual_seed(0)
    model = backbone.build_lm(arch).eval()
    ids = torch.randint(WORD_SPECIALS.n_reserved, 40, (1, 9))
    whole = [backbone.next_token_logits(model, ids[:, :n], WORD_SPECIALS) for n in range(5, 10)]
    stepped = [backbone.read_on(model, ids[:, :5], True)]  # the prompt's 5 tokens at once, then one a step
    stepped += [backbone.read_on(model, ids[:, n - 1:n], False) for n in range(6, 10)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stepped, whole))
    encoder = type("Words", (), {"specials": WORD_SPECIALS, "encode": lambda self, texts, what: [ids[0, :3]],
                                 "decode": lambda self, tokens: " ".join(map(str, tokens))})()
    text = generate(model, backbone, encoder, "a prompt", n_tokens=4)
    assert len(text.split()) == 3 + 4
    assert all(h is None or not torch.is_tensor(h) or not h.abs().sum() for h in _hidden(model))


def _hidden(model) -> list:
    return [t for layer in getattr(model[0], "hidden", []) for t in layer]


def test_every_backbone_is_registered():
    assert {"awd_lstm", "gpt", "bert"} <= set(REGISTRY)
    assert {b.objective for b in REGISTRY.values()} == {"causal", "masked"}


@pytest.mark.parametrize("name", ["gpt", "bert"])
def test_init_from_seeds_or_skips_stage_one(tmp_path, name, data_dir):
    """A user's local checkpoint replaces the random start; with epochs=0 stage 1 only evaluates it."""
    from pipeline.artifacts.model_file import load_model_file
    from pipeline.stages import adapt, pretrain
    from pipeline.stages.context import make_context

    ckpt = tmp_path / "ckpt"
    model, encoder = _tiny_checkpoint(ckpt, name)
    cfg = load_config("smoke", [f"model.backbone={name}", f"pretrain.init_from={ckpt}", "pretrain.epochs=0",
                                "adapt.max_docs=40", "adapt.frozen_epochs=0"])
    result = pretrain.run(make_context("pretrain", cfg, tmp_path / "pretrain"))
    lm = load_model_file(result.path, expect_kind="lm")
    assert lm.vocab == encoder.itos and lm.tokenizer["kind"] == "pretrained"
    for key, value in model.state_dict().items():
        assert torch.equal(lm.state_dict[key], value), key  # untouched: stage 1 was skipped
    assert result.metrics["init_from"] == str(ckpt)
    adapted = adapt.run(make_context("adapt", cfg, tmp_path / "adapt", result.path))
    assert adapted.metrics["vocab_size"] == len(encoder.itos)  # the checkpoint's tokenizer is kept


def test_init_from_for_the_lstm_wants_fastai_files(tmp_path, data_dir):
    """The AWD-LSTM starts from fastai's model-zoo files (tests/test_zoo.py); any other folder is one error."""
    from pipeline.stages import pretrain
    from pipeline.stages.context import make_context

    cfg = load_config("smoke", [f"pretrain.init_from={tmp_path}"])
    with pytest.raises(ArtifactError, match=r"one state dict \(\*.pth\)"):
        pretrain.run(make_context("pretrain", cfg, tmp_path / "pretrain"))
