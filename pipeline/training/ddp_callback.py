"""The fastai side of DDP: a callback that wraps the Learner's model for the length of one fit."""
from __future__ import annotations

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.learner import Recorder
from torch.nn.parallel import DistributedDataParallel

from pipeline.training.ranks import all_reduce_sum


class _DDP(DistributedDataParallel):
    def reset(self):
        # fastai's ModelResetter calls learn.model.reset() (AWD-LSTM hidden state)
        if hasattr(self.module, "reset"):
            self.module.reset()


class DDPCallback(Callback):
    """Wrap learn.model in DistributedDataParallel for one fit, unwrap after it.

    Rebuilt per fit because freeze/unfreeze changes requires_grad between fits. Runs its
    after_epoch between the Recorder (which computes the rank's train loss) and EpochLog (which
    logs it), so the history holds the loss averaged over all ranks."""

    order = Recorder.order + 0.5

    def __init__(self, find_unused_parameters: bool = False):
        self.find_unused = find_unused_parameters

    def before_fit(self):
        if isinstance(self.learn.model, DistributedDataParallel):
            return
        ids = [torch.cuda.current_device()] if next(self.learn.model.parameters()).is_cuda else None
        self.learn.model = _DDP(self.learn.model, device_ids=ids, find_unused_parameters=self.find_unused)

    def before_epoch(self):
        self.trained = False

    def after_train(self):
        self.trained = True

    def after_epoch(self):
        rec = self.learn.recorder
        # An epoch skipped on resume (fastai's SkipToEpoch cancels it before training) logged no loss.
        if not self.trained or "train_loss" not in rec.metric_names:
            return
        i = rec.metric_names.index("train_loss")
        rec.log[i] = all_reduce_sum([float(rec.log[i])])[0] / dist.get_world_size()
        rec.values[-1][i - 1] = rec.log[i]  # values holds log[1:]

    def after_fit(self):
        if isinstance(self.learn.model, DistributedDataParallel):
            self.learn.model = self.learn.model.module
