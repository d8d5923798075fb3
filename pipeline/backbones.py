"""Backbone registry (in the spirit of fastai's `_model_meta`).

Each entry says how to build the language model and the classifier, how to split each
into layer groups (for discriminative LRs and gradual unfreezing), which LM weights are
indexed by vocabulary row (for embedding transfer) and how LM weights seed the
classifier's encoder. Stage code looks entries up by name and never branches on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from pipeline.config import ClassifyConfig, ModelConfig
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Backbone:
    name: str
    description: str
    build_lm: Callable[[int, ModelConfig], nn.Module]
    build_classifier: Callable[[int, int, ModelConfig, ClassifyConfig], nn.Module]
    lm_splitter: Callable[[nn.Module], list]
    classifier_splitter: Callable[[nn.Module], list]
    vocab_keys: tuple[str, ...]  # LM state_dict entries whose first dim is the vocabulary
    lm_to_classifier: Callable[[dict], dict]  # LM state_dict -> classifier encoder entries
    callbacks: Callable[[], list] = field(default=lambda: [])  # fastai callbacks training needs


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    if name not in REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# --- AWD-LSTM (fastai) -----------------------------------------------------------------------

def _awd_config(base: dict, model: ModelConfig) -> dict:
    # A partial config makes fastai raise KeyError('tie_weights'): always start from the full default.
    return {**base, "emb_sz": model.emb_sz, "n_hid": model.n_hid, "n_layers": model.n_layers}


def _awd_lm(vocab_sz: int, model: ModelConfig) -> nn.Module:
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    return get_language_model(AWD_LSTM, vocab_sz, config=_awd_config(awd_lstm_lm_config, model),
                              drop_mult=model.drop_mult)


def _awd_classifier(vocab_sz: int, n_class: int, model: ModelConfig, clas: ClassifyConfig) -> nn.Module:
    from fastai.text.all import AWD_LSTM, awd_lstm_clas_config, get_text_classifier

    # ULMFiT head: concat pooling [last, max, mean] -> 50 -> n_class, BatchNorm + dropout per block.
    return get_text_classifier(AWD_LSTM, vocab_sz, n_class, seq_len=clas.bptt,
                               config=_awd_config(awd_lstm_clas_config, model),
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


def _rnn_callbacks() -> list:
    from fastai.text.all import rnn_cbs

    return rnn_cbs(alpha=2.0, beta=1.0)  # AR/TAR regularisation as in AWD-LSTM / ULMFiT


register(Backbone(
    name="awd_lstm",
    description="fastai AWD-LSTM (Merity et al.), the ULMFiT backbone; BPT3C classifier with concat pooling",
    build_lm=_awd_lm,
    build_classifier=_awd_classifier,
    lm_splitter=_awd_lm_split,
    classifier_splitter=_awd_clas_split,
    vocab_keys=("0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight", "1.decoder.bias"),
    lm_to_classifier=_awd_lm_to_classifier,
    callbacks=_rnn_callbacks,
))
