"""Resident set vs live tensors during training: is a growing RSS tensors or free heap?

Runs the `pretrain` stage (the `cpu` preset, on `--docs` WikiText-2 articles) with a callback that,
every 25 training batches, collects garbage, sums the storage of every live CPU tensor
(`gc.get_objects()`) and prints the RSS; with --trim it then calls glibc's `malloc_trim(0)` and
prints the RSS again. Live tensors that stay flat while the RSS grows, and a trim that gives the
growth back, mean free heap kept by malloc (BENCHMARKS.md, "Memory"). Note: since pipeline/training/memory.py,
every Learner already trims every 20 batches; --no-pipeline-trim takes that callback out to see the
growth it prevents.

usage: OMP_NUM_THREADS=1 python -m benchmarks.heap_growth [--docs 120] [--trim] [--no-pipeline-trim]
"""
from __future__ import annotations

import argparse
import gc
import tempfile

import psutil
import torch
from fastai.callback.core import Callback
from fastai.learner import defaults

import pipeline.training.learner as training
from pipeline.training.memory import trim_heap

PROCESS = psutil.Process()


class HeapReport(Callback):
    order = 99

    trim = False  # set by main: a class attribute, since fastai instantiates default callbacks itself

    def after_batch(self):
        if not self.training or self.iter % 25:
            return
        gc.collect()
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "cpu"]
        live_mb = sum(t.untyped_storage().nbytes() for t in tensors) / 1e6
        line = f"batch {self.iter}: RSS {PROCESS.memory_info().rss / 1e9:.2f} GB, live tensors {live_mb:.0f} MB"
        if self.trim:
            trim_heap()
            line += f", RSS after malloc_trim {PROCESS.memory_info().rss / 1e9:.2f} GB"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120)
    parser.add_argument("--trim", action="store_true", help="malloc_trim after each report")
    parser.add_argument("--no-pipeline-trim", action="store_true", help="disable the pipeline's TrimHeap callback")
    args = parser.parse_args()
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage
    if args.no_pipeline_trim:
        training.TrimHeap.after_batch = training.TrimHeap.after_validate = lambda self: None
    HeapReport.trim = args.trim
    defaults.callbacks = list(defaults.callbacks) + [HeapReport]
    cfg = load_config("cpu", [f"pretrain.max_docs={args.docs}"])
    with tempfile.TemporaryDirectory() as out:
        run_stage(make_context("pretrain", cfg, f"{out}/pretrain"))


if __name__ == "__main__":
    main()
