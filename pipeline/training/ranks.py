"""Data-parallel training over N processes with plain torch.distributed (DDP).

A stage runs distributed when it is launched by `torchrun` (which sets RANK, WORLD_SIZE and
LOCAL_RANK); `pipeline.stages.run_one` calls `init()` once, and everything else asks the process group
(`group()`, `rank()`, `world_size()`).
We do not use fastai's DistributedTrainer: it needs `accelerate` and fastai's issues report
bugs with language models. What DDP needs from us:

- identical batch counts on every rank (a rank that runs out early leaves the others blocked
  in all-reduce): `shard_stream` gives each rank an equal-length slice of the LM token stream,
  `shard_items` an equal number of classifier examples;
- the DDP wrapper rebuilt at each fit (gradual unfreezing changes which parameters need
  gradients, and DDP registers its hooks once, at construction): `pipeline.training.ddp_callback.DDPCallback`;
- global metrics: every rank validates on the whole held-out set with the same (synchronised)
  weights, so validation metrics are global by construction; the training loss in the history
  is all-reduced across ranks;
- one writer: only rank 0 writes artifacts (`pipeline.artifacts.stage_folder.write_stage`) and epoch checkpoints
  (`pipeline.training.checkpoint`), the others wait.

This module imports only torch (artifacts and the flow import it; fastai stays out of their way).
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from pipeline.errors import ConfigError

log = logging.getLogger("ulmfit")


def _launched_world_size() -> int:
    """The process count torchrun launched (its WORLD_SIZE): what `init` joins."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True inside a process group of more than one process (not merely with WORLD_SIZE set)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def init(device: torch.device) -> None:
    """Join the process group once (gloo on CPU, nccl on CUDA); a no-op for a single process.
    `device` is the stage's (pipeline.training.learner.pick_device), so both agree on CPU or CUDA."""
    if _launched_world_size() <= 1 or dist.is_initialized():
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())  # before any CUDA tensor: one GPU per process
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity for one process)."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def group() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) outside one. The one source of both."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def rank() -> int:
    return group()[0]


def world_size() -> int:
    return group()[1]


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] for one process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (`obj` itself for one process)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def per_rank_batch(bs: int, n: int | None = None) -> int:
    """The global batch `bs` split over the ranks, so nproc changes the speed, not the recipe."""
    n = group()[1] if n is None else n
    if bs % n:
        raise ConfigError(f"batch size {bs} is not divisible by nproc={n}: pick a multiple")
    return bs // n


def shard_stream(docs: list[torch.Tensor], r: int | None = None, n: int | None = None) -> list[torch.Tensor]:
    """This rank's equal-length slice of the concatenated token stream, cut back into documents at
    the original boundaries (so the LM loader can still shuffle documents each epoch)."""
    r, n = group() if r is None else (r, n)
    if n == 1 or not docs:
        return docs
    lengths = torch.tensor([len(d) for d in docs])
    share = int(lengths.sum()) // n
    start, stop = r * share, (r + 1) * share
    stream = torch.cat(docs)[start:stop]
    ends = torch.cumsum(lengths, 0)
    cuts = [int(e) - start for e in ends if start < int(e) < stop]
    pieces = torch.tensor_split(stream, cuts) if cuts else (stream,)
    return [p for p in pieces if len(p)]


def shard_items(items: list, r: int | None = None, n: int | None = None) -> list:
    """items[r::n], cut to the same count on every rank."""
    r, n = group() if r is None else (r, n)
    if n == 1:
        return items
    return items[r::n][: len(items) // n]


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise mean of `tensor` over all ranks (unchanged for one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor
