"""Backbone registry (in the spirit of fastai's `_model_meta`).

Each entry owns its size model (the config's `[model.<name>]` section), and says how to
describe an architecture ("arch": a plain dict stored in model.pt),
build the language model and the classifier from it, split each into layer groups (for
discriminative LRs and gradual unfreezing), which LM weights are indexed by vocabulary row
(for embedding transfer), how LM weights seed the classifier's encoder, which callbacks the
LM objective needs, and how to predict a next token for sampling. Stage code looks entries up
by name and never branches on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
from pydantic import BaseModel, Field
from torch import nn

from pipeline.config_base import SizeSection
from pipeline.errors import ConfigError
from pipeline.models import hf_backbones as hf
from pipeline.models import scorers

if TYPE_CHECKING:  # annotations only: pipeline.config imports this registry
    from pipeline.config import ClassifyConfig, ModelConfig


@dataclass(frozen=True)
class Backbone:
    name: str
    description: str
    sizes: Optional[type[BaseModel]]  # its size section, `[model.<name>]` in the config (None: no settings)
    objective: str  # "causal" (next token) or "masked" (BERT's masked tokens): names the perplexity reported
    make_arch: Callable[[int, ModelConfig, object], dict]  # (vocab size, model config, specials) -> arch
    build_lm: Callable[[dict], nn.Module]
    build_classifier: Callable[[dict, int, ClassifyConfig, object], nn.Module]  # (arch, n_class, cfg, specials)
    lm_splitter: Callable[[nn.Module], list]
    classifier_splitter: Callable[[nn.Module], list]
    vocab_keys: tuple[str, ...]  # LM state_dict entries whose first dim is the vocabulary
    lm_to_classifier: Callable[[dict], dict]  # LM state_dict -> classifier encoder entries
    next_token_logits: Callable[[nn.Module, torch.Tensor, object], torch.Tensor]  # (model, ids (1, n), specials)
    classifier_head: Callable[[nn.Module], nn.Module]  # the classifier's head: its input is the pooled features
    lm_callbacks: Callable[[int, object, int], list] = field(default=lambda vocab_sz, specials, seed: [])
    classifier_callbacks: Callable[[], list] = field(default=lambda: [])
    max_seq_len: Callable[[dict], Optional[int]] = field(default=lambda arch: None)
    # init_from: (local folder, run config) -> (LM, arch, encoder); and a quick look at the folder for the
    # pre-run check (the files are there and readable), without loading the weights
    load_checkpoint: Optional[Callable[[object, object], tuple]] = None
    check_checkpoint: Optional[Callable[[object], None]] = None
    save_pretrained: Optional[Callable[[nn.Module, object, object], None]] = None  # (LM, encoder, folder): export
    # (trained classifier, its classify config, specials) -> the same classifier as one graph, ids in,
    # probabilities out (pipeline/models/scorers.py): what `ulmfit export --format onnx` writes
    scorer: Optional[Callable[[nn.Module, ClassifyConfig, object], nn.Module]] = None
    # (model, ids (1, k), fresh) -> next-token logits after reading `ids` on from the model's own recurrent
    # state, from a clean one when `fresh` (a model with `reset()`, as fastai's RNNs): sampling reads one new
    # token a step. None: each step re-reads the whole text (next_token_logits)
    read_on: Optional[Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]] = None
    compilable: bool = False  # torch.compile pays off (fastai's weight-dropped LSTM gains little and breaks graphs)
    cpu_bf16: bool = False  # precision=auto trains in bf16 on a CPU with native bf16 (measured: BENCHMARKS.md)


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    if name not in REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def with_vocab(arch: dict, vocab_sz: int) -> dict:
    """The same architecture over a different vocabulary (stage 2 rebuilds it for the target text)."""
    return {**arch, "vocab_size": vocab_sz}


# --- AWD-LSTM (fastai) -----------------------------------------------------------------------

class AwdLstmConfig(SizeSection):
    """Size section of the AWD-LSTM backbone (`[model.awd_lstm]`)."""

    emb_sz: int = Field(400, gt=0, description="Embedding size.")
    n_hid: int = Field(1152, gt=0, description="Hidden size of each recurrent layer.")
    n_layers: int = Field(3, gt=0, description="Number of recurrent layers.")


def _awd_arch(vocab_sz: int, model: ModelConfig, specials) -> dict:
    sizes = model.sizes()
    return {"vocab_size": vocab_sz, "emb_sz": sizes.emb_sz, "n_hid": sizes.n_hid, "n_layers": sizes.n_layers,
            "drop_mult": model.drop_mult}


def _awd_config(base: dict, arch: dict) -> dict:
    # A partial config makes fastai raise KeyError('tie_weights'): always start from the full default.
    return {**base, "emb_sz": arch["emb_sz"], "n_hid": arch["n_hid"], "n_layers": arch["n_layers"]}


def _awd_lm(arch: dict) -> nn.Module:
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    return get_language_model(AWD_LSTM, arch["vocab_size"], config=_awd_config(awd_lstm_lm_config, arch),
                              drop_mult=arch["drop_mult"])


def _awd_classifier(arch: dict, n_class: int, clas: ClassifyConfig, specials) -> nn.Module:
    from fastai.text.all import AWD_LSTM, awd_lstm_clas_config, get_text_classifier

    if clas.pooling not in ("auto", "concat"):
        raise ConfigError(f"classify.pooling={clas.pooling!r}: the awd_lstm classifier pools with concat only")
    # ULMFiT head: concat pooling [last, max, mean] -> 50 -> n_class, BatchNorm + dropout per block.
    return get_text_classifier(AWD_LSTM, arch["vocab_size"], n_class, seq_len=clas.bptt,
                               config=_awd_config(awd_lstm_clas_config, arch), pad_idx=specials.pad,
                               drop_mult=clas.drop_mult, lin_ftrs=[50], max_len=clas.max_len)


def _awd_lm_split(model: nn.Module) -> list:
    from fastai.text.all import awd_lstm_lm_split

    return list(awd_lstm_lm_split(model))


def _awd_clas_split(model: nn.Module) -> list:
    from fastai.text.all import awd_lstm_clas_split

    return list(awd_lstm_clas_split(model))


def _awd_lm_to_classifier(lm_state: dict) -> dict:
    # LM = SequentialRNN(AWD_LSTM, LinearDecoder); classifier = SequentialRNN(SentenceEncoder(AWD_LSTM), head)
    return {f"0.module.{k[2:]}": v for k, v in lm_state.items() if k.startswith("0.")}


def _awd_arch_from_state(state: dict, drop_mult: float) -> dict:
    """The architecture a fastai AWD-LSTM state dict was trained with (the published one: 400/1152/3)."""
    vocab_sz, emb_sz = state["0.encoder.weight"].shape
    n_layers = len({key.split(".")[2] for key in state if key.startswith("0.rnns.")})
    n_hid = state["0.rnns.0.weight_hh_l0_raw"].shape[1] if n_layers > 1 else emb_sz
    return {"vocab_size": int(vocab_sz), "emb_sz": int(emb_sz), "n_hid": int(n_hid), "n_layers": n_layers,
            "drop_mult": drop_mult}


def _awd_load_checkpoint(folder, cfg) -> tuple:
    """A fastai AWD-LSTM folder (the model zoo's *.pth + *.pkl; pipeline.models.zoo reads them safely), loaded
    by parameter name after fastai's own `clean_raw_keys` (older files also hold the dropped-out copies)."""
    from fastai.text.all import clean_raw_keys

    from pipeline.data.encoders import WordEncoder
    from pipeline.errors import ArtifactError
    from pipeline.models.zoo import load_fastai_lm

    state, vocab, weights = load_fastai_lm(folder)
    try:
        arch = _awd_arch_from_state(state, cfg.model.drop_mult)
        model = _awd_lm(arch)
        model.load_state_dict(clean_raw_keys(dict(state)), strict=True)
    except (KeyError, RuntimeError) as err:
        raise ArtifactError(f"{weights}: not a fastai AWD-LSTM language model's state dict "
                            f"({str(err).splitlines()[0]})") from None
    return model, arch, WordEncoder(vocab, cfg.tokenizer.lang, cfg.cache_dir, cfg.tokenizer.n_workers)


def _awd_check_checkpoint(folder) -> None:
    from pipeline.models.zoo import fastai_files, read_vocab_pickle

    read_vocab_pickle(fastai_files(folder)[1])


def _hf_checkpoint(load: Callable) -> Callable:
    def load_checkpoint(folder, cfg) -> tuple:
        from pipeline.data.encoders import encoder_from_checkpoint

        encoder = encoder_from_checkpoint(folder)
        model, arch = load(folder)
        return model, arch, encoder
    return load_checkpoint


def _hf_check_checkpoint(folder) -> None:
    from pipeline.data.encoders import encoder_from_checkpoint

    encoder_from_checkpoint(folder)  # the folder and its tokenizer.json are there


def _rnn_callbacks(*_args) -> list:
    from fastai.text.all import rnn_cbs

    return rnn_cbs(alpha=2.0, beta=1.0)  # AR/TAR regularisation as in AWD-LSTM / ULMFiT


@torch.no_grad()
def _awd_next(model: nn.Module, ids: torch.Tensor, specials) -> torch.Tensor:
    model.reset()  # read the whole prompt from a clean state; leave a clean state behind
    out = model(ids)
    logits = (out[0] if isinstance(out, tuple) else out)[0, -1]  # fastai RNN models may return a tuple
    model.reset()
    return logits


@torch.no_grad()
def _awd_read_on(model: nn.Module, ids: torch.Tensor, fresh: bool) -> torch.Tensor:
    if fresh:
        model.reset()
    out = model(ids)
    return (out[0] if isinstance(out, tuple) else out)[0, -1]


def _masked_lm_callbacks(vocab_sz: int, specials, seed: int) -> list:
    from pipeline.training.masking import MaskedLM

    if specials.mask is None:
        raise ConfigError("the bert backbone needs a tokenizer with a mask token")
    return [MaskedLM(vocab_sz, specials.mask, specials.pad, specials.n_reserved, seed)]


register(Backbone(
    name="awd_lstm",
    description="fastai AWD-LSTM (Merity et al.), the ULMFiT backbone; BPT3C classifier with concat pooling",
    sizes=AwdLstmConfig,
    objective="causal",
    make_arch=_awd_arch,
    build_lm=_awd_lm,
    build_classifier=_awd_classifier,
    lm_splitter=_awd_lm_split,
    classifier_splitter=_awd_clas_split,
    vocab_keys=("0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight", "1.decoder.bias"),
    lm_to_classifier=_awd_lm_to_classifier,
    next_token_logits=_awd_next,
    read_on=_awd_read_on,  # at the paper's sizes a card's 9 samples took 16 s re-reading their text each step
    classifier_head=lambda model: model[1].layers,  # PoolingLinearClassifier: concat pooling, then these
    lm_callbacks=_rnn_callbacks,
    classifier_callbacks=_rnn_callbacks,
    load_checkpoint=_awd_load_checkpoint,
    check_checkpoint=_awd_check_checkpoint,
    scorer=scorers.awd_lstm_scorer,
    cpu_bf16=True,  # 1.34x / 1.57x the fp32 tokens/s on two AMD EPYCs with native bf16, +0.99 % valid loss after 30 steps (BENCHMARKS.md)
))

register(Backbone(
    name="gpt",
    description="GPT-2-style causal transformer (HF transformers, from a config); chunked classifier, concat pooling",
    sizes=hf.TransformerConfig,
    objective="causal",
    make_arch=hf.gpt_arch,
    build_lm=hf.build_causal_lm,
    build_classifier=hf.classifier_builder("concat"),
    lm_splitter=hf.lm_split,
    classifier_splitter=hf.classifier_split,
    vocab_keys=("hf.transformer.wte.weight", "hf.lm_head.weight"),
    lm_to_classifier=hf.lm_to_classifier,
    next_token_logits=hf.causal_next,
    classifier_head=hf.classifier_head,
    max_seq_len=hf.max_positions,
    load_checkpoint=_hf_checkpoint(hf.load_causal_lm),
    check_checkpoint=_hf_check_checkpoint,
    save_pretrained=hf.save_pretrained,
    scorer=scorers.transformer_scorer,
    compilable=True,
    cpu_bf16=True,  # 1.66x / 1.41x the fp32 tokens/s on two AMD EPYCs with native bf16, +0.15 % valid loss (BENCHMARKS.md)
))

register(Backbone(
    name="bert",
    description="BERT-style masked-LM transformer (HF transformers, from a config); 15% masking 80/10/10, mean pooling",
    sizes=hf.BertSizes,
    objective="masked",
    make_arch=hf.bert_arch,
    build_lm=hf.build_masked_lm,
    build_classifier=hf.classifier_builder("mean"),
    lm_splitter=hf.lm_split,
    classifier_splitter=hf.classifier_split,
    vocab_keys=("hf.bert.embeddings.word_embeddings.weight", "hf.cls.predictions.decoder.weight",
                "hf.cls.predictions.bias", "hf.cls.predictions.decoder.bias"),
    lm_to_classifier=hf.lm_to_classifier,
    next_token_logits=hf.masked_next,
    classifier_head=hf.classifier_head,
    lm_callbacks=_masked_lm_callbacks,
    max_seq_len=hf.max_positions,
    load_checkpoint=_hf_checkpoint(hf.load_masked_lm),
    check_checkpoint=_hf_check_checkpoint,
    save_pretrained=hf.save_pretrained,
    scorer=scorers.transformer_scorer,
    compilable=True,
    cpu_bf16=True,  # 1.42x / 1.48x the fp32 tokens/s on two AMD EPYCs with native bf16, -0.13 % valid loss (BENCHMARKS.md)
))
