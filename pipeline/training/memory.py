"""Hand freed heap memory back to the operating system while training on CPU.

Why this exists: glibc's malloc keeps memory that torch has freed inside its heaps, and the
mid-sized buffers of a training step (per-timestep LSTM activations, gradients, bf16 copies) come
back in shapes that do not fit the holes the previous step left. So the resident set grows batch
after batch although the live tensors stay the same: 3 MB per batch at one thread on the `cpu`
preset's AWD-LSTM (294 MB of live tensors throughout), and 6.5 GB peak for the default run, nearly
all of it free heap (BENCHMARKS.md, "Memory"). `malloc_trim(0)` returns those pages; calling it
every few batches (`training.TrimHeap`) keeps the resident set flat (its cost on its own has not
been measured; the default run's tokens/s did not drop).

On platforms without glibc's `malloc_trim` (macOS, musl) every function here is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

TRIM_EVERY = 20  # training batches between trims: bounds the growth to ~20 batches' worth


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def trim_heap() -> None:
    """Return the free pages of every malloc arena to the OS (no-op without glibc)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def release_memory() -> None:
    """After a stage: collect the Learner's reference cycles (fastai callbacks point back at their
    Learner), then trim, so the next stage starts from the memory the process really uses."""
    gc.collect()
    trim_heap()
