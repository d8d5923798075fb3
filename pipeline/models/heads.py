"""Classifier heads: the ULMFiT head the backbones build, and a linear head started from the linear
probe (linear probing then fine-tuning, "LP-FT", Kumar et al. 2022).

`classify.head = "lp_ft"` replaces whatever head the backbone built with

    Standardize (the training reviews' feature mean and SD, fixed) -> Dropout -> Linear,

and, before fine-tuning, sets it to the probe's solution: logistic regression on the frozen encoder's
standardised pooled features, C chosen on the validation hold-out. Fine-tuning then starts from what
a linear model already reads in the features instead of from a random head.

Why a fixed standardisation and not BatchNorm: BatchNorm divides by sqrt(var + eps) with eps = 1e-5,
an SD floor of 3.2e-3. A barely trained masked LM's pooled features vary between reviews by ~3e-6
(RESULTS.md, "Why the pretrained bert's classifier fails"), so BatchNorm hands the head the same
input for every review while a probe, which standardises with no floor, still finds the signal.
The standardisation here has a floor 1e6 times lower than the features' own scale.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

HEADS = ("ulmfit", "lp_ft")


class Standardize(nn.Module):
    """(x - mean) / sd per feature, with statistics measured once (buffers, saved with the model), in fp32."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("inv_sd", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_sd

    @torch.no_grad()
    def fit(self, features: np.ndarray) -> None:
        x = torch.as_tensor(features, dtype=torch.float64)
        mean, sd = x.mean(0), x.std(0)
        floor = 1e-6 * float(x.abs().mean()) + 1e-30  # relative: features of any scale, never a division by 0
        self.mean.copy_(mean.float())
        self.inv_sd.copy_((1 / sd.clamp(min=floor)).float())


def linear_head(n_in: int, n_class: int, drop_mult: float) -> nn.Sequential:
    return nn.Sequential(Standardize(n_in), nn.Dropout(0.1 * drop_mult), nn.Linear(n_in, n_class))


def head_inputs(head: nn.Module) -> int:
    """The number of pooled features `head` reads: the in_features of its first linear layer."""
    return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features


def use_head(head: nn.Sequential, kind: str, n_class: int, drop_mult: float) -> None:
    """Make the backbone's head `kind`, in place (the model, its scorers and its splitter keep
    referring to the same Sequential): "ulmfit" keeps it, "lp_ft" swaps in `linear_head`."""
    if kind == "ulmfit":
        return
    if kind != "lp_ft":
        raise ValueError(f"unknown head {kind!r}: choose from {', '.join(HEADS)}")
    new = linear_head(head_inputs(head), n_class, drop_mult)
    while len(head):
        del head[0]
    head.extend(new)


def init_from_probe(head: nn.Sequential, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                    y_valid: np.ndarray) -> dict:
    """Set an "lp_ft" head to the linear probe's solution on these pooled features; returns the probe's
    scores ({"valid_accuracy", "C"}). The head's logits then equal the fitted logistic regression's."""
    from pipeline.training.baselines import fit_tuned_logistic_regression

    standardize, linear = head[0], head[-1]
    standardize.fit(x_train)
    with torch.no_grad():
        z_train = standardize(torch.as_tensor(x_train)).numpy()
        z_valid = standardize(torch.as_tensor(x_valid)).numpy()
    fitted, scores = fit_tuned_logistic_regression(z_train, y_train, z_valid, y_valid, standardize=False)
    coef, intercept = fitted.coef_, fitted.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row for class 1; logits (-z/2, z/2) give the same softmax
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    classes = list(fitted.classes_)
    weight, bias = np.zeros((linear.out_features, coef.shape[1])), np.zeros(linear.out_features)
    for row, cls in enumerate(classes):  # a class absent from the training labels keeps logit 0
        weight[cls], bias[cls] = coef[row], intercept[row]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    return scores
