"""BatchNorm statistics that match the weights they are used with ("precise BN", Wu & Johnson 2021).

A classifier head normalises its pooled features with BatchNorm (ULMFiT's head). In training, each
batch is normalised by its own mean and variance; in evaluation, by running averages collected
during training. Those averages are only right when the features vary widely between reviews
and change slowly (the AWD-LSTM's). A small transformer LM's pooled features barely vary between
reviews (between-review SD 1e-4 .. 1e-1), and encoder dropout moves them by more than that in
training, so the running averages sit far from the evaluation-time features and the classifier
predicts one class. (`running_var` also starts at 1 and decays by 0.9 per step: after 64 steps
0.001 of it is left, more than such a feature's real variance.)

`RecomputeBNStats` therefore re-estimates every BatchNorm layer's statistics before each
evaluation: one pass over the training examples with the current weights, the rest of the model
in evaluation mode (no dropout), and a cumulative average (momentum None) over the whole pass.
Evaluation then normalises with the statistics of exactly the features it will see.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from torch import nn

from pipeline.training import ranks

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches) -> int:
    """Re-estimate the BatchNorm statistics of `model` over `batches`; return how many layers were reset."""
    layers = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    if not layers:
        return 0
    was_training, momenta = model.training, [m.momentum for m in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts equally
        layer.train()
    try:
        for xb, _ in batches:
            if hasattr(model, "reset"):
                model.reset()  # an RNN reads each batch of reviews from a clean state
            model(xb)
        if ranks.is_distributed():  # every rank saw its own shard: average the estimates
            for layer in layers:
                ranks.all_reduce_mean_(layer.running_mean)
                ranks.all_reduce_mean_(layer.running_var)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)


class RecomputeBNStats(Callback):
    """Before every evaluation (per-epoch validation and the final test), recompute BatchNorm
    statistics over the training examples in a fixed order (the training loader's own shuffling
    and RNG are left untouched, so runs and resumes stay reproducible)."""

    order = 5  # before the other callbacks' before_validate

    def before_validate(self):
        recompute_bn_stats(self.learn.model, self.learn.dls.train.new(shuffle=False, drop_last=False))
