"""Resume after a crash: every training epoch ends with a checkpoint beside the stage folder.

    runs/cpu/pretrain.partial/
        key.txt         the stage's cache key: a checkpoint is only reused for the same stage inputs
        pretrain.pt     one file per fit phase ("adapt-frozen", "adapt", "phase1", ...): the model,
                        the optimizer, the epochs done out of how many, every RNG state (Python,
                        NumPy, torch, each DataLoader's own generator and LM document order) and the
                        epoch log so far

A stage whose StageContext has a checkpointer (the flow's stages, and every torchrun worker of a
data-parallel stage) finds those files on its next run: a finished phase is restored instead of
retrained, an unfinished one continues at `start_epoch` (fastai skips the done epochs and keeps
the one-cycle / STLR schedule position, which is a function of the epoch). The folder is removed
once the stage folder is written. Files are written to a temporary name and renamed, and loaded
with `weights_only=True`.

Under DDP only rank 0 writes. The weights and the optimizer state are the same on every rank;
the RNG states and each rank's data-loader state (its own shard's document order) are gathered
into rank 0's file, and on resume each rank restores its own. A checkpoint written with another
number of processes is not resumed from (the shards differ): the phase starts over.
"""
from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from fastcore.foundation import L

from pipeline.artifacts.stage_folder import (
    foreign_checkpoints,
    os_reason,
    refuse_foreign,
    remove_checkpoints,
    save_torch,
)
from pipeline.errors import ArtifactError
from pipeline.training import ranks

log = logging.getLogger("ulmfit")


def _plain(obj: Any) -> Any:
    """Only tensors and Python builtins, so the file loads with weights_only=True."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)):
        items = [_plain(v) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its DDP wrapper (DDPCallback wraps it for the length of a fit)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _loader_states(learn) -> list[dict]:
    states = []
    for dl in learn.dls.loaders:
        state = {"rng": dl.rng.getstate()}
        idxs = getattr(getattr(dl, "items", None), "idxs", None)
        if idxs is not None and hasattr(dl, "make_chunks"):  # LMDataLoader shuffles its documents in place
            state["idxs"] = list(idxs)
        states.append(state)
    return states


def _restore_loaders(learn, states: list[dict]) -> None:
    for dl, state in zip(learn.dls.loaders, states):
        dl.rng.setstate(state["rng"])
        if "idxs" in state:
            dl.items.idxs[:] = state["idxs"]  # the same list object the lengths share
            if hasattr(dl.items, "cache_clear"):
                dl.items.cache_clear()
            dl.make_chunks()


def _rank_states(learn) -> list[dict]:
    """Every rank's RNG and data-loader state, in rank order (this process's alone outside DDP)."""
    state = _plain({"rng": _rng_state(), "loaders": _loader_states(learn)})
    if not ranks.is_distributed():
        return [state]
    mine = io.BytesIO()  # tensors travel between ranks as torch.save bytes (pickled tensors do not)
    torch.save(state, mine)
    return [torch.load(io.BytesIO(data), weights_only=True) for data in ranks.gather_objects(mine.getvalue())]


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(legacy=False),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in numpy_state["state"].items()}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """The checkpoint files of one stage run."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = Path(folder), key
        refuse_foreign(self.folder, foreign_checkpoints)  # a user's folder of that name is never touched
        key_file = self.folder / "key.txt"
        stale = self.folder.exists() and (not key_file.exists() or key_file.read_text() != key)
        if stale and ranks.is_rank0():
            log.info("discarding checkpoints in %s: written for other stage inputs", self.folder)
            self.clear()
        ranks.barrier()  # no rank reads a folder rank 0 is discarding

    def path(self, phase: str) -> Path:
        return self.folder / f"{phase}.pt"

    def save(self, phase: str, learn, epochs_done: int, n_epochs: int, recorder) -> None:
        """Every rank calls this at the same epoch end; rank 0 writes, and a failed write stops all ranks."""
        rank_states = _rank_states(learn)
        error = None
        if ranks.is_rank0():
            blob = _plain({"phase": phase, "epochs_done": epochs_done, "n_epochs": n_epochs,
                           "model": _unwrapped(learn.model).state_dict(), "opt": learn.opt.state_dict(),
                           "ranks": rank_states, "rows": recorder.rows, "batch_losses": recorder.batch_losses})
            error = self._write(phase, blob)
        error = ranks.broadcast_object(error)
        if error is not None:
            raise ArtifactError(error)

    def _write(self, phase: str, blob: dict) -> str | None:
        tmp = self.path(phase).with_suffix(f".tmp-{os.getpid()}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_torch(blob, tmp)
            os.replace(tmp, self.path(phase))
            (self.folder / "key.txt").write_text(self.key)
        except BaseException as err:  # a full disk, or Ctrl-C during the write: no temp file stays
            tmp.unlink(missing_ok=True)
            if not any(self.folder.glob("*.pt")):  # nothing worth keeping for a resume
                self.clear()
            if not isinstance(err, OSError):
                raise
            return f"{self.path(phase)}: cannot write checkpoint ({os_reason(err)})"
        return None

    def load(self, phase: str, n_epochs: int) -> dict | None:
        path = self.path(phase)
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a checkpoint cut short by the crash itself: start the phase over
            log.warning("ignoring unreadable checkpoint %s (%s)", path, type(err).__name__)
            return None
        if blob.get("n_epochs") != n_epochs:
            return None
        if len(blob.get("ranks", [])) != ranks.world_size():
            log.info("%s: written by %d process(es), this run has %d: starting the phase over", path,
                     len(blob.get("ranks", [])), ranks.world_size())
            return None
        return blob

    def resume(self, phase: str, learn, recorder, n_epochs: int) -> int:
        """Restore the phase's last checkpoint into `learn`; return the epochs already done (0: none)."""
        blob = self.load(phase, n_epochs)
        if blob is None:
            return 0
        if learn.opt is None:
            learn.create_opt()
        learn.model.load_state_dict(blob["model"])
        device = next(learn.model.parameters()).device
        opt_state = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                     for s in blob["opt"]["state"]]
        learn.opt.load_state_dict({"state": opt_state, "hypers": L(blob["opt"]["hypers"])})
        mine = blob["ranks"][ranks.rank()]
        _restore_rng(mine["rng"])
        _restore_loaders(learn, mine["loaders"])
        recorder.rows[:] = blob["rows"]
        recorder.batch_losses[:] = blob["batch_losses"]
        done = int(blob["epochs_done"])
        log.info("%s: resuming from checkpoint, %d/%d epoch(s) already done (%s)", phase, done, n_epochs, self.path(phase))
        return done

    def callback(self, phase: str, recorder, start_epoch: int) -> "EpochCheckpoint":
        return EpochCheckpoint(self, phase, recorder, start_epoch)

    def clear(self) -> None:
        """Remove the checkpoint files, then the folder if nothing else is in it (rank 0 only)."""
        if not ranks.is_rank0():
            return
        remove_checkpoints(self.folder)


class EpochCheckpoint(Callback):
    """Write the phase's checkpoint at the end of every epoch it trains (after the epoch log)."""

    order = 90  # after Recorder (50) and EpochLog (51); SkipToEpoch is 70

    def __init__(self, ckpt: Checkpointer, phase: str, recorder, start_epoch: int):
        self.ckpt, self.phase, self.recorder, self.start_epoch = ckpt, phase, recorder, start_epoch
        self.error: ArtifactError | None = None

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # an epoch fastai skipped because it was already done
            return
        try:
            self.ckpt.save(self.phase, self.learn, self.epoch + 1, self.n_epoch, self.recorder)
        except ArtifactError as err:
            # fastai rewrites exceptions raised in callbacks into a multi-line message; stop the
            # fit cleanly instead and let `raise_error` re-raise the one-line error afterwards.
            self.error = err
            raise CancelFitException() from None

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
