"""The heap trimming that keeps a CPU run's resident set flat (pipeline/training/memory.py, training.TrimHeap)."""
from types import SimpleNamespace

import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

import pipeline.training.learner as training
import pipeline.training.memory as memory
from pipeline.stages import registry


def test_trim_heap_returns_freed_heap_pages_to_the_os():
    """~200 MB of malloc'd blocks freed around survivors stay in the process until trim_heap (measured here:
    225 MB -> 28 MB RSS). Without glibc trim_heap is a no-op, never an error."""
    import platform

    import psutil

    memory.release_memory()
    if platform.libc_ver()[0] != "glibc":
        assert memory._MALLOC_TRIM is None
        return
    blocks = [bytes(2048) for _ in range(100_000)]  # 2 KB each: malloc, not Python's small-object arenas
    kept = blocks[::50]  # survivors between the freed blocks: free() alone cannot hand those holes back
    del blocks
    held = psutil.Process().memory_info().rss
    memory.trim_heap()
    assert psutil.Process().memory_info().rss < held - 100e6 and len(kept) == 2000


def test_trim_every_n_training_batches_and_after_validation(monkeypatch):
    calls = []
    monkeypatch.setattr(training, "trim_heap", lambda: calls.append(1))
    cb = training.TrimHeap(every=5)
    cb.learn = SimpleNamespace(training=True, iter=0)
    for i in range(12):
        cb.learn.iter = i
        cb.after_batch()
    assert len(calls) == 2  # after batches 5 and 10
    cb.learn.training = False
    cb.after_batch()  # a validation batch: no trim per batch...
    cb.after_validate()  # ...one after the pass
    assert len(calls) == 3


def test_every_learner_trims():
    dl = DataLoader([(torch.zeros(2), torch.tensor(0))] * 4, bs=2)
    learn = training.make_learner(DataLoaders(dl, dl), torch.nn.Linear(2, 2), lambda m: [list(m.parameters())],
                                  [], [], 0.0, torch.device("cpu"))
    assert any(isinstance(cb, training.TrimHeap) for cb in learn.cbs)


@pytest.mark.parametrize("fails", [False, True])
def test_run_stage_releases_memory_after_success_and_failure(monkeypatch, fails):
    released = []
    monkeypatch.setattr(registry, "release_memory", lambda: released.append(1))

    def entry(ctx):
        if fails:
            raise RuntimeError("boom")
        return "result"
    stage = SimpleNamespace(upstream=None, entry=lambda: entry)
    monkeypatch.setattr(registry, "get_stage", lambda name: stage)
    ctx = SimpleNamespace(stage="pretrain", checkpointer=None)
    if fails:
        with pytest.raises(RuntimeError):
            registry.run_stage(ctx)
    else:
        assert registry.run_stage(ctx) == "result"
    assert released == [1]
