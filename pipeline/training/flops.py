"""The language model's compute, counted: forward FLOPs per token of an architecture, and a stage's training FLOPs.

The backbones are compared at equal LM compute (issue 21), so the study needs FLOPs the same way for an LSTM
and a transformer. `6 x params x tokens` is that estimate for a transformer at short context, and the
AWD-LSTM's parameters are each used once per token too, but attention adds work the parameter count does not
see, and a vocabulary's embedding rows cost nothing while its decoder costs 2 x d x V. So the FLOPs are
counted by torch's own `FlopCounterMode` on one forward pass of a freshly built model:

- with oneDNN off, so the LSTM runs as ATen's per-step matmuls the counter sees (oneDNN's fused RNN kernel
  is one opaque op, counted as 0);
- with eager attention in Hugging Face models, so the attention products are counted as the matmuls they
  are (the CPU's fused scaled-dot-product kernel is not in the counter's table).

Training FLOPs are 3 x the forward's (the backward pass costs about twice the forward: Kaplan et al. 2020).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BACKWARD_FACTOR = 3  # forward + backward (about 2x the forward) per training token


@contextmanager
def _eager_attention(model: nn.Module):
    """Every Hugging Face config in `model` set to eager attention for the block, then put back."""
    configs = {id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "_attn_implementation")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = before[key]


def forward_flops_per_token(model: nn.Module, vocab_size: int, seq_len: int) -> float:
    """FLOPs of one forward pass of the language model `model` per token, read on one sequence of `seq_len`
    random ids (attention's cost grows with it: use the stage's bptt). The model is left as it was, apart
    from any recurrent state, so pass a fresh one (`backbone.build_lm(arch)`)."""
    ids = torch.randint(0, vocab_size, (1, seq_len))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _eager_attention(model):
            warnings.simplefilter("ignore")  # the oneDNN switch warns about a TF32 setting it passes on
            with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
                model(ids)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / seq_len


def lm_flops_metrics(backbone, arch: dict, seq_len: int, tokens_read: int) -> dict:
    """metrics.json entries of an LM stage: its architecture's forward FLOPs per token (at `seq_len`) and the
    training FLOPs of reading `tokens_read` tokens (tokens x epochs). Frozen phases are counted as full ones:
    they skip part of the backward pass, so this is an upper bound for them."""
    with torch.random.fork_rng(devices=[]):  # building and reading a model draws numbers the run's RNG must not lose
        per_token = forward_flops_per_token(backbone.build_lm(arch), arch["vocab_size"], seq_len)
    return {"forward_flops_per_token": per_token, "train_flops": BACKWARD_FACTOR * per_token * tokens_read}
