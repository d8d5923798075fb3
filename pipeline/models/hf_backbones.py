"""Transformer backbones built from Hugging Face `transformers` configs (never downloaded).

`gpt` = GPT-2 architecture (causal LM), `bert` = BERT architecture (masked LM). Both are
random-initialised from a config, or loaded from a local checkpoint folder (`init_from`).
An "arch" is the HF config as a plain dict, stored in every model.pt so any stage can rebuild
the model. Layer groups (for discriminative LRs / gradual unfreezing) mirror AWD-LSTM's:

    language model:  [block 0] [block 1] ... [block n-1] [embeddings + final norm + LM head]
    classifier:      [embeddings] [block 0] ... [block n-1] [final norm + pooling head]

Classifier on long reviews (chunk and pool): the review, padded by the loader at the front in
whole chunks, is cut into chunks of `bptt` tokens; each non-empty chunk is encoded on its own
(positions restart at 0) and the pooling runs over the token states of all chunks:

    ids  [pad pad pad | t0 t1 t2 | t3 t4 t5 | t6 pad pad]   -> chunks of bptt = 3
    keep [    no      |   yes    |   yes    |   yes     ]   -> encoder(chunks[keep], attention mask)
    pool over t0..t6:  concat [last, max, mean] | last | first | mean | max
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.config_base import SizeSection
from pipeline.errors import ArtifactError, ConfigError

if TYPE_CHECKING:  # annotations only: pipeline.config imports the backbone registry
    from pipeline.config import ClassifyConfig, ModelConfig

EMBEDDING_NAMES = {"wte", "wpe", "embeddings", "embed_tokens", "embed_positions"}


class TransformerConfig(SizeSection):
    """Size section of a transformer backbone (`[model.gpt]`, `[model.bert]`)."""

    d_model: int = Field(512, gt=0, description="Hidden size (embedding size).")
    n_layers: int = Field(6, gt=0, description="Transformer blocks.")
    n_heads: int = Field(8, gt=0, description="Attention heads; must divide d_model.")
    d_ff: int = Field(2048, gt=0, description="Feed-forward inner size.")
    max_positions: int = Field(512, gt=1, description="Longest sequence the position embeddings cover (>= every bptt).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout (times model.drop_mult) on attention, residuals and embeddings.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        return self


class BertSizes(TransformerConfig):
    """`[model.bert]`: a transformer section that trains at a tenth of the preset's learning rates, in every stage.

    BERT puts its LayerNorm after each residual (post-LN), which diverges at the AWD-LSTM's Adam rate of
    1e-2 (Xiong et al. 2020): the masked LM then settles on states that hardly depend on the input, and no
    classifier can read them. On 100 WikiText-2 articles the pooled features varied between reviews by
    6e-6 (median SD) at 1e-2 and by 5.5e-2 at 1e-3 (RESULTS.md, "Why the pretrained bert's classifier failed")."""

    lr_mult: float = Field(0.1, gt=0, description="Multiplies every learning rate of the preset for this backbone (pretrain.lr, adapt.lr, adapt.frozen_lr, classify.lrs): bert's post-LN masked LM collapses at the AWD-LSTM's 1e-2 (RESULTS.md).")


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at runtime
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"transformer backbones need the `transformers` package ({err})") from None
    return transformers


def config_from_arch(arch: dict):
    fields = dict(arch)
    return _transformers().AutoConfig.for_model(fields.pop("model_type"), **fields)


def gpt_arch(vocab_sz: int, model: ModelConfig, specials) -> dict:
    t = model.sizes()
    p = t.dropout * model.drop_mult
    cfg = _transformers().GPT2Config(
        vocab_size=vocab_sz, n_embd=t.d_model, n_layer=t.n_layers, n_head=t.n_heads, n_inner=t.d_ff,
        n_positions=t.max_positions, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
        bos_token_id=specials.bos, eos_token_id=specials.bos, pad_token_id=specials.pad)
    return cfg.to_dict()


def bert_arch(vocab_sz: int, model: ModelConfig, specials) -> dict:
    t = model.sizes()
    p = t.dropout * model.drop_mult
    cfg = _transformers().BertConfig(
        vocab_size=vocab_sz, hidden_size=t.d_model, num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads,
        intermediate_size=t.d_ff, max_position_embeddings=t.max_positions, hidden_dropout_prob=p,
        attention_probs_dropout_prob=p, type_vocab_size=1, pad_token_id=specials.pad)
    return cfg.to_dict()


class HFLanguageModel(nn.Module):
    """An HF *ForCausalLM / *ForMaskedLM returning plain logits (what the shared LM loop expects)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=plain(ids)).logits


def plain(ids: torch.Tensor) -> torch.Tensor:
    """fastai hands models its TensorBase subclass; every torch op on a subclass goes through a Python
    __torch_function__ dispatch, which inside a transformer's hundreds of small ops costs real CPU time.
    A plain tensor view of the same storage avoids it (the outputs are plain tensors too)."""
    return ids.as_subclass(torch.Tensor) if type(ids) is not torch.Tensor else ids


def build_causal_lm(arch: dict) -> nn.Module:
    return HFLanguageModel(_transformers().AutoModelForCausalLM.from_config(config_from_arch(arch)))


def build_masked_lm(arch: dict) -> nn.Module:
    return HFLanguageModel(_transformers().AutoModelForMaskedLM.from_config(config_from_arch(arch)))


def _load_local(auto_name: str, path) -> tuple[nn.Module, dict]:
    auto = getattr(_transformers(), auto_name)
    try:
        hf = auto.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # missing files, wrong architecture, corrupted weights
        raise ArtifactError(f"init_from {path}: cannot load a {auto_name[len('AutoModelFor'):]} checkpoint "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return HFLanguageModel(hf), hf.config.to_dict()


def load_causal_lm(path) -> tuple[nn.Module, dict]:
    return _load_local("AutoModelForCausalLM", path)


def load_masked_lm(path) -> tuple[nn.Module, dict]:
    return _load_local("AutoModelForMaskedLM", path)


def save_pretrained(model: HFLanguageModel, encoder, folder) -> None:
    """The model and its tokenizer as transformers' Auto classes load them, with no code of ours
    (`ulmfit export --format hf`). The tokenizer puts the bos token first, as the stages' encoder does."""
    from tokenizers import Tokenizer, processors

    model.hf.save_pretrained(str(folder), safe_serialization=True)
    tok, sp, itos = Tokenizer.from_str(encoder.tokenizer.to_str()), encoder.specials, encoder.itos
    if sp.bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{itos[sp.bos]} $A",
                                                           special_tokens=[(itos[sp.bos], sp.bos)])
    named = {"unk_token": sp.unk, "pad_token": sp.pad, "bos_token": sp.bos, "mask_token": sp.mask}
    fast = _transformers().PreTrainedTokenizerFast(
        tokenizer_object=tok, **{key: itos[i] for key, i in named.items() if i is not None})
    fast.save_pretrained(str(folder))


def max_positions(arch: dict) -> int | None:
    """Longest input of an architecture (a config dict; GPT-2 names it n_positions)."""
    return arch.get("n_positions") or arch.get("max_position_embeddings")


# --- layer groups ------------------------------------------------------------------------------

def _blocks(base: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList holding the most parameters."""
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{type(base).__name__}: no list of transformer blocks found")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _rest(model: nn.Module, taken: list[list]) -> list:
    seen = {id(p) for group in taken for p in group}
    return [p for p in model.parameters() if id(p) not in seen]


def lm_split(model: HFLanguageModel) -> list:
    groups = [list(block.parameters()) for block in _blocks(model.hf.base_model)]
    return groups + [_rest(model, groups)]  # tied embeddings / LM head sit in the last group


def classifier_split(model: "TransformerClassifier") -> list:
    blocks = [list(block.parameters()) for block in _blocks(model.encoder)]
    block_ids = {id(p) for group in blocks for p in group}
    embeddings = [p for name, p in model.encoder.named_parameters()
                  if name.split(".")[0] in EMBEDDING_NAMES and id(p) not in block_ids]
    groups = [embeddings] + blocks
    return groups + [_rest(model, groups)]


def classifier_head(model: "TransformerClassifier") -> nn.Module:
    return model.head


def lm_to_classifier(lm_state: dict) -> dict:
    """LM `hf.<base>.x` -> classifier `encoder.x` (<base> = transformer, bert, roberta, ...)."""
    prefixes = [k.split(".")[1] for k in lm_state if k.startswith("hf.")]
    base = max(set(prefixes), key=prefixes.count)
    return {f"encoder.{k[len(base) + 4:]}": v for k, v in lm_state.items() if k.startswith(f"hf.{base}.")}


# --- classifier ------------------------------------------------------------------------------------

class TransformerClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_class: int, pooling: str, chunk_len: int, pad_id: int, drop_mult: float):
        from fastai.layers import LinBnDrop

        super().__init__()
        self.encoder, self.pooling, self.chunk_len, self.pad_id = encoder, pooling, chunk_len, pad_id
        d = encoder.config.hidden_size
        n_in = 3 * d if pooling == "concat" else d
        # The ULMFiT head: BatchNorm + dropout + linear, 50 hidden units.
        self.head = nn.Sequential(LinBnDrop(n_in, 50, p=0.4 * drop_mult, act=nn.ReLU(inplace=True)),
                                  LinBnDrop(50, n_class, p=0.1 * drop_mult))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bs = ids.shape[0]
        chunks, real = chunked(plain(ids), self.chunk_len, self.pad_id)
        keep = real.any(dim=1)
        states = self.encoder(input_ids=chunks[keep], attention_mask=real[keep].long()).last_hidden_state
        hidden = states.new_zeros(chunks.shape[0], self.chunk_len, states.shape[-1])
        hidden[keep] = states
        return self.head(pool(hidden.view(bs, -1, states.shape[-1]), real.view(bs, -1), self.pooling))


def chunked(ids: torch.Tensor, chunk_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bs, T) ids -> (bs * n_chunks, chunk_len) chunks, padded at the end to whole chunks, and their
    real-token mask; a review's chunks are consecutive rows."""
    chunks = torch.nn.functional.pad(ids, (0, -ids.shape[1] % chunk_len), value=pad_id).reshape(-1, chunk_len)
    return chunks, chunks != pad_id


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden (bs, T, d), mask (bs, T) True at real tokens -> (bs, d) or (bs, 3d) for concat."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    first = mask.float().argmax(dim=1)
    last = mask.shape[1] - 1 - mask.flip(1).float().argmax(dim=1)
    if how == "first":
        return hidden[rows, first]
    if how == "last":
        return hidden[rows, last]
    m = mask.unsqueeze(-1)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "mean":
        return mean
    biggest = hidden.masked_fill(~m, torch.finfo(hidden.dtype).min).max(dim=1).values
    if how == "max":
        return biggest
    return torch.cat([hidden[rows, last], biggest, mean], dim=1)


DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob")


def classifier_dropout(arch: dict, drop_mult: float) -> dict:
    """The LM's encoder dropouts times classify.drop_mult, as the AWD-LSTM classifier scales its own:
    one setting reaches the whole classifier, encoder included."""
    return {**arch, **{k: arch[k] * drop_mult for k in DROPOUT_KEYS if k in arch}}


def classifier_builder(default_pooling: str):
    def build(arch: dict, n_class: int, clas: ClassifyConfig, specials) -> nn.Module:
        limit = max_positions(arch)
        if limit and clas.bptt > limit:
            raise ConfigError(f"classify.bptt={clas.bptt} exceeds the model's {limit} positions")
        encoder = _transformers().AutoModel.from_config(config_from_arch(classifier_dropout(arch, clas.drop_mult)))
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's NSP pooler: unused, and it has no pretrained weights here
        pooling = default_pooling if clas.pooling == "auto" else clas.pooling
        return TransformerClassifier(encoder, n_class, pooling, clas.bptt, specials.pad, clas.drop_mult)
    return build


@torch.no_grad()
def causal_next(model: HFLanguageModel, ids: torch.Tensor, specials) -> torch.Tensor:
    limit = max_positions(vars(model.hf.config)) or ids.shape[1]
    return model(ids[:, -limit:])[0, -1]


@torch.no_grad()
def masked_next(model: HFLanguageModel, ids: torch.Tensor, specials) -> torch.Tensor:
    # A masked LM "generates" by predicting a mask token appended after the prompt.
    limit = (max_positions(vars(model.hf.config)) or ids.shape[1] + 1) - 1
    ids = torch.cat([ids[:, -limit:], ids.new_full((1, 1), specials.mask)], dim=1)
    return model(ids)[0, -1]
