"""Training plumbing shared by the stages: device choice, Learner set-up, schedules, epoch logs.

fastai's progress bars print a line per batch when stdout is not a terminal; we turn them
off and log one line per epoch (plus a heartbeat every ~30 s inside long epochs).
"""
from __future__ import annotations

import logging
import random
import time
from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, SchedLin, combine_scheds
from fastai.learner import Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import Adam

from pipeline.training.accel import prepare
from pipeline.training.guards import FiniteLoss
from pipeline.training.memory import TRIM_EVERY, trim_heap

log = logging.getLogger("ulmfit")
HEARTBEAT_SECS = 30.0


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochLog(Callback):
    """Log one line per epoch, a heartbeat with ETA in long epochs, and keep the history."""

    order = Recorder.order + 1  # after the Recorder has written this epoch's values

    def __init__(self, phase: str = "train"):
        self.phase, self.rows, self.batch_losses = phase, [], []
        self.skip_to = 0  # epochs below this were done before a resume: fastai skips them

    def before_epoch(self):
        self.epoch_start = self.last_beat = time.perf_counter()

    def after_batch(self):
        if not self.training:
            return
        self.batch_losses.append(float(self.smooth_loss))
        now = time.perf_counter()
        if now - self.last_beat < HEARTBEAT_SECS:
            return
        self.last_beat = now
        done, total = self.iter + 1, self.n_iter
        eta = (now - self.epoch_start) / done * (total - done)
        log.info("  %s epoch %d/%d: batch %d/%d, loss %.4f, ETA %s", self.phase, self.epoch + 1,
                 self.n_epoch, done, total, float(self.smooth_loss), _clock(eta))

    def after_epoch(self):
        if self.epoch < self.skip_to:
            return
        names, values = self.recorder.metric_names, self.recorder.log
        row = {"phase": self.phase, **{n: v for n, v in zip(names, values)}}
        row["epoch"] = len(self.rows)
        row["batches_seen"] = len(self.batch_losses)
        row["time"] = time.perf_counter() - self.epoch_start
        self.rows.append(row)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "time")
        log.info("%s epoch %d/%d: %s (%s)", self.phase, self.epoch + 1, self.n_epoch, shown, _clock(row["time"]))

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


class EpochSeed(Callback):
    """Reseed Python's global `random` from torch's generator as each epoch starts.

    fastai's LM loader shuffles documents with the global `random`, which other threads also
    draw from at unpredictable moments (Prefect's websocket pings). Reseeding makes every
    epoch's order a function of the run's seed and the epochs before it, so a resumed run
    (torch's RNG state is checkpointed) shuffles exactly as an uninterrupted one would.
    """

    order = 71  # after fastai's SkipToEpoch (70): epochs skipped on resume draw nothing

    def before_epoch(self):
        random.seed(int(torch.randint(0, 2**62, (1,))))


def _clock(secs: float) -> str:
    secs = int(secs)
    return f"{secs // 60}:{secs % 60:02d}"


class TrimHeap(Callback):
    """`memory.trim_heap` every `every` training batches and after each validation pass: without it
    the resident set grows by megabytes per batch on CPU (pipeline/training/memory.py)."""
    order = 100  # after every callback that could still allocate in the batch

    def __init__(self, every: int = TRIM_EVERY):
        self.every = every

    def after_batch(self):
        if self.training and (self.iter + 1) % self.every == 0:
            trim_heap()

    def after_validate(self):
        trim_heap()


def make_learner(dls, model, splitter, callbacks, metrics, wd: float, device: torch.device,
                 compile_model: bool = False, precision: str = "fp32") -> Learner:
    # Adam with beta2 = 0.99 as in ULMFiT; beta1 follows the one-cycle momentum schedule.
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=partial(Adam, sqr_mom=0.99),
                    splitter=splitter, cbs=[*callbacks, TrimHeap()], metrics=metrics, wd=wd, moms=(0.8, 0.7, 0.8))
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None  # EpochLog writes the lines
    return prepare(learn, device, compile_model, precision)  # precision, torch.compile, DDP


def fit(learn: Learner, epochs: int, lr, schedule: str, phase: str, recorder: EpochLog, ckpt=None) -> None:
    """Train for `epochs` with a one-cycle or slanted-triangular schedule; lr may be a slice.

    With a checkpointer (the stage context's, `pipeline.training.checkpoint.Checkpointer`), each epoch is
    checkpointed and a rerun after a crash resumes this phase from its last finished epoch.
    """
    if epochs <= 0:
        return
    recorder.phase = phase
    cbs, start = [recorder, EpochSeed(), FiniteLoss(phase, lr)], 0
    if ckpt is not None:
        start = ckpt.resume(phase, learn, recorder, epochs)
        if start >= epochs:
            return
        cbs.append(ckpt.callback(phase, recorder, start))
    recorder.skip_to = start
    if schedule == "one_cycle":
        learn.fit_one_cycle(epochs, lr, cbs=cbs, start_epoch=start)
    else:
        learn.fit(epochs, cbs=[_stlr(learn, lr), *cbs], start_epoch=start)
    for cb in cbs:
        if hasattr(cb, "raise_error"):
            cb.raise_error()  # a checkpoint that could not be written (disk full), a diverged loss


def _stlr(learn: Learner, lr, cut_frac: float = 0.1, ratio: float = 32.0) -> ParamScheduler:
    """Slanted triangular LR (Howard & Ruder 2018): linear warm-up for cut_frac, then linear decay."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr)
    lr_max = np.array([h["lr"] for h in learn.opt.hypers])
    return ParamScheduler({
        "lr": combine_scheds([cut_frac, 1 - cut_frac], [SchedLin(lr_max / ratio, lr_max), SchedLin(lr_max, lr_max / ratio)]),
        "mom": combine_scheds([cut_frac, 1 - cut_frac], [SchedLin(0.8, 0.7), SchedLin(0.7, 0.8)]),
    })


def discriminative(lr: float, n_groups: int, decay: float):
    """lr for the top group, lr / decay**k for the group k below it (ULMFiT's eta_{l-1} = eta_l / 2.6)."""
    return [lr / decay ** (n_groups - 1 - g) for g in range(n_groups)]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
