"""Stop a diverged training run with one clear line instead of training on NaNs.

With a learning rate far too high the loss becomes NaN or infinite within a few batches; fastai
would train on to the end and the stage would report perplexity `nan` (or crash later while
sampling text from NaN probabilities). `FiniteLoss` checks each training batch's loss after its
step; under DDP the ranks agree first (one all-reduce of a flag), so every rank stops at the
same batch and none waits forever in the next gradient all-reduce.
"""
from __future__ import annotations

import math

from fastai.callback.core import Callback, CancelFitException

from pipeline.errors import UlmfitError
from pipeline.training import ranks


class TrainingDiverged(UlmfitError):
    """The training loss became NaN or infinite."""


class FiniteLoss(Callback):
    order = 52  # after EpochLog (51) has recorded the batch

    def __init__(self, phase: str, lr):
        self.phase, self.lr, self.error = phase, lr, None

    def after_batch(self):
        if not self.training:
            return
        loss = float(self.loss.detach())
        bad = ranks.all_reduce_sum([0.0 if math.isfinite(loss) else 1.0])[0] > 0
        if bad:
            top = max(self.lr) if isinstance(self.lr, (list, tuple)) else self.lr
            self.error = TrainingDiverged(
                f"{self.phase}: the training loss became {loss} in epoch {self.epoch + 1}, batch {self.iter + 1}; "
                f"the learning rate (top {top:g}) is too high for these settings: lower it")
            # fastai rewrites exceptions raised in callbacks into a multi-line message; stop cleanly.
            raise CancelFitException()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
