"""BERT's masked-language-model objective as a batch transform for the shared LM loop.

The LM data loader yields (x, y = x shifted by one). For a masked LM we ignore y and rebuild
the batch from x (Devlin et al. 2019):

    selected  = 15 % of the non-padding positions, chosen at random
    of those: 80 % -> mask token, 10 % -> a random ordinary token, 10 % left unchanged
    target    = the original token at selected positions, IGNORE (-100) everywhere else

so the loss (cross-entropy, which skips IGNORE) and the accuracy metric count selected
positions only. Validation batches use a fixed seed so held-out scores are comparable.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback

IGNORE = -100  # nn.CrossEntropyLoss's default ignore_index


def mask_tokens(x: torch.Tensor, vocab_sz: int, mask_id: int, pad_id: int, n_reserved: int,
                generator: torch.Generator | None = None, p: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input, targets) for a batch of token ids `x` (any shape)."""
    def uniform():
        return torch.rand(x.shape, generator=generator, device=x.device)

    can_pick = x != pad_id
    selected = (uniform() < p) & can_pick
    if not selected.any() and can_pick.any():  # never an all-IGNORE batch (its loss would be NaN)
        selected.view(-1)[can_pick.view(-1).nonzero()[0]] = True
    action = uniform()
    corrupted = x.clone()
    corrupted[selected & (action < 0.8)] = mask_id
    randomise = selected & (action >= 0.8) & (action < 0.9)
    low = min(n_reserved, vocab_sz - 1)
    random_ids = torch.randint(low, vocab_sz, x.shape, generator=generator, device=x.device)
    corrupted[randomise] = random_ids[randomise]
    targets = torch.where(selected, x, torch.full_like(x, IGNORE))
    return corrupted, targets


class MaskedLM(Callback):
    """Turn each LM batch into a masked-LM batch (training: fresh randomness; validation: seeded)."""

    order = -5  # before mixed precision and the model call

    def __init__(self, vocab_sz: int, mask_id: int, pad_id: int, n_reserved: int, seed: int = 0):
        self.vocab_sz, self.mask_id, self.pad_id, self.n_reserved, self.seed = vocab_sz, mask_id, pad_id, n_reserved, seed
        self.valid_gen = None

    def before_validate(self):
        self.valid_gen = None  # re-seeded lazily on the right device

    def before_batch(self):
        x = self.xb[0]
        gen = None
        if not self.training:
            if self.valid_gen is None or self.valid_gen.device != x.device:
                self.valid_gen = torch.Generator(device=x.device).manual_seed(self.seed)
            gen = self.valid_gen
        corrupted, targets = mask_tokens(x, self.vocab_sz, self.mask_id, self.pad_id, self.n_reserved, gen)
        self.learn.xb, self.learn.yb = (corrupted,), (targets,)


def lm_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token (or masked-token) accuracy over the positions that have a target."""
    keep = targets != IGNORE
    if not keep.any():
        return logits.new_tensor(0.0)
    return (logits.argmax(dim=-1)[keep] == targets[keep]).float().mean()
