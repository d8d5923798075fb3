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

import torch
from fastai.data.core import DataLoaders
from fastai.metrics import Perplexity
from fastai.text.data import LMDataLoader

from pipeline.errors import ConfigError
from pipeline.models.backbones import Backbone
from pipeline.models.direction import orient, single_direction
from pipeline.training import ranks
from pipeline.training.learner import make_learner
from pipeline.training.masking import lm_accuracy

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


def lm_data(encoder, train_texts: list[str], valid_texts: list[str], name: str,
            direction: str = "forward") -> LMData:
    """Encode both text sets with the stage's encoder into token-id documents, each read in `direction`
    (a backward LM reads every document reversed, its bos first: pipeline.models.direction)."""
    bos = encoder.specials.bos
    single_direction(direction)  # before any tokenizing

    def docs(texts, part):
        return [torch.from_numpy(orient(d, bos, direction)) for d in encoder.encode(texts, f"{name}/{part}") if len(d)]
    return LMData(docs(train_texts, "train"), docs(valid_texts, "valid"))


def lm_loader(docs: list[torch.Tensor], bs: int, bptt: int, shuffle: bool, device) -> LMDataLoader:
    # Shrink the batch for tiny held-out sets so every row still gets at least one window.
    n_tokens = sum(len(d) for d in docs)
    bs = max(1, min(bs, (n_tokens - 1) // (bptt + 1)))
    return LMDataLoader(docs, bs=bs, seq_len=bptt, shuffle=shuffle, device=device,
                        pin_memory=device is not None and torch.device(device).type == "cuda")


def lm_learner(backbone: Backbone, model, arch: dict, data: LMData, bs: int, bptt: int, wd: float, device,
               specials, seed: int, compile_model: bool = False, precision: str = "fp32"):
    limit = backbone.max_seq_len(arch)
    if limit and bptt > limit:
        raise ConfigError(f"bptt={bptt} exceeds the {backbone.name} model's {limit} positions")
    # Under DDP each rank trains on an equal slice of the stream with its share of the batch, and
    # validates on the whole held-out stream (so validation metrics are the global ones).
    train = lm_loader(ranks.shard_stream(data.train), ranks.per_rank_batch(bs), bptt, True, device)
    dls = DataLoaders(train, lm_loader(data.valid, bs, bptt, False, device), device=device)
    callbacks = backbone.lm_callbacks(arch["vocab_size"], specials, seed)
    return make_learner(dls, model, backbone.lm_splitter, callbacks,
                        metrics=[lm_accuracy, Perplexity()], wd=wd, device=device, compile_model=compile_model,
                        precision=precision)


def evaluate(learn) -> dict:
    """Held-out loss, perplexity and token accuracy on the learner's validation stream.

    For a masked LM these are over the masked positions (BERT's pseudo-perplexity), which is
    not comparable with a causal LM's next-token perplexity."""
    loss, acc, _ = learn.validate()
    return {"loss": float(loss), "perplexity": float(math.exp(loss)), "accuracy": float(acc)}


def final_scores(learn, recorder) -> dict:
    """`evaluate` after training, without a second pass over the held-out stream when fit just made one.

    `recorder` is the stage's EpochLog: its last row is the last epoch trained (or restored on
    resume) with the final weights, named by fastai's metric names (masked-LM validation is
    seeded, so a fresh pass would give the same numbers). With no epoch trained (adaptation
    skipped: epochs=0) there is no such row and the held-out stream is evaluated."""
    rows = getattr(recorder, "rows", None)
    last = rows[-1] if rows else {}
    if "valid_loss" not in last or "lm_accuracy" not in last:
        return evaluate(learn)
    loss = float(last["valid_loss"])
    return {"loss": loss, "perplexity": float(math.exp(loss)), "accuracy": float(last["lm_accuracy"])}


@torch.no_grad()
def generate(model, backbone: Backbone, encoder, prompt: str, n_tokens: int = 20, temperature: float = 0.8,
             seed: int = 0, direction: str = "forward") -> str:
    """Sample a continuation of `prompt` (stage cards and notebooks). A recurrent model reads one new token
    a step on from its own state (`Backbone.read_on`); a transformer re-reads the whole text each step.

    A backward LM reads the prompt as the end of a text and writes what comes before it; the text
    is returned in reading order (generated words, then the prompt)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bos = encoder.specials.bos
    out = orient(encoder.encode([prompt], "prompt")[0], bos, direction).tolist()
    never = [i for i in (encoder.specials.unk, encoder.specials.pad, encoder.specials.bos, encoder.specials.mask)
             if i is not None]
    try:
        for step in range(n_tokens):
            if backbone.read_on is None:
                logits = backbone.next_token_logits(model, torch.tensor([out], device=device), encoder.specials)
            else:
                logits = backbone.read_on(model, torch.tensor([out if step == 0 else out[-1:]], device=device),
                                          step == 0)
            logits = logits.float().cpu() / temperature
            logits[never] = -float("inf")
            out.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    finally:
        if backbone.read_on is not None:
            model.reset()  # leave a clean state behind, as next_token_logits does
        model.train(was_training)
    return encoder.decode(orient(out, bos, direction).tolist())
