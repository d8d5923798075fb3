"""Language-model plumbing shared by pretrain (stage 1) and adapt (stage 2).

BPTT batching (fastai's LMDataLoader). Documents are shuffled each epoch, concatenated
into one stream, and the stream is cut into `bs` rows that are read left to right in
windows of `bptt` tokens. Row r of consecutive batches continues the same text, so the
AWD-LSTM's hidden state carries over between batches (ModelResetter clears it per epoch):

    stream:  d3 d1 d7 d2 ...  ->  row 0: t0    t1    ... t(L-1)
                                  row 1: tL    tL+1  ... t(2L-1)        L = len(stream) // bs
                                  ...
    batch k: x = rows[:, k*bptt : (k+1)*bptt],  y = the same window shifted one token right
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.metrics import Perplexity, accuracy
from fastai.text.data import LMDataLoader

from pipeline.backbones import Backbone
from pipeline.tokens import TokenizedCorpus, numericalize, numericalize_tokens, tokenize_texts
from pipeline.training import EpochLog, make_learner

log = logging.getLogger("ulmfit")
SAMPLE_PROMPTS = ["This movie was", "The acting in this film", "I would not recommend"]


@dataclass
class LMData:
    train: list[torch.Tensor]
    valid: list[torch.Tensor]

    @property
    def n_train_tokens(self) -> int:
        return sum(len(d) for d in self.train)

    @property
    def n_valid_tokens(self) -> int:
        return sum(len(d) for d in self.valid)


def to_docs(corpus: TokenizedCorpus, itos: list[str]) -> list[torch.Tensor]:
    ids, offsets = numericalize(corpus, itos)
    return [torch.from_numpy(ids[offsets[i]:offsets[i + 1]].astype(np.int64)) for i in range(len(offsets) - 1)]


def lm_loader(docs: list[torch.Tensor], bs: int, bptt: int, shuffle: bool, device) -> LMDataLoader:
    # Shrink the batch for tiny held-out sets so every row still gets at least one window.
    n_tokens = sum(len(d) for d in docs)
    bs = max(1, min(bs, (n_tokens - 1) // (bptt + 1)))
    return LMDataLoader(docs, bs=bs, seq_len=bptt, shuffle=shuffle, device=device)


def lm_learner(backbone: Backbone, model, data: LMData, bs: int, bptt: int, wd: float, device):
    dls = DataLoaders(lm_loader(data.train, bs, bptt, True, device),
                      lm_loader(data.valid, bs, bptt, False, device), device=device)
    return make_learner(dls, model, backbone.lm_splitter, backbone.callbacks(),
                        metrics=[accuracy, Perplexity()], wd=wd, device=device)


def evaluate(learn) -> dict:
    """Held-out loss, perplexity and next-token accuracy on the learner's validation stream."""
    loss, acc, _ = learn.validate()
    return {"loss": float(loss), "perplexity": float(math.exp(loss)), "accuracy": float(acc)}


def new_recorder() -> EpochLog:
    return EpochLog()


@torch.no_grad()
def generate(model, itos: list[str], prompt: str, n_words: int = 20, temperature: float = 0.8,
             lang: str = "en", seed: int = 0) -> str:
    """Sample a continuation of `prompt` (used for stage cards and notebooks)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.eval()
    _reset(model)
    ids = numericalize_tokens(tokenize_texts([prompt], lang)[0], itos)
    out = list(ids)
    x = torch.tensor([ids], device=device)
    for _ in range(n_words):
        logits = _logits(model(x))[0, -1].float().cpu() / temperature
        logits[[0, 1]] = -float("inf")  # never sample xxunk / xxpad
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        out.append(nxt)
        x = torch.tensor([[nxt]], device=device)
    _reset(model)  # the next forward pass (training or evaluation) starts from a clean state
    return detokenize([itos[i] for i in out])


def detokenize(tokens: list[str]) -> str:
    """Undo fastai's case markers for display: xxmaj word -> Word, xxup word -> WORD."""
    words, marker = [], None
    for tok in tokens:
        if tok in ("xxmaj", "xxup"):
            marker = tok
        elif tok not in ("xxbos", "xxeos", "xxpad"):
            words.append(tok.capitalize() if marker == "xxmaj" else tok.upper() if marker == "xxup" else tok)
            marker = None
    return " ".join(words)


def _reset(model) -> None:
    if hasattr(model, "reset"):
        model.reset()


def _logits(output):
    # fastai RNN models return (logits, raw_outputs, outputs); plain modules return logits.
    return output[0] if isinstance(output, tuple) else output
