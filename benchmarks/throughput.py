"""Training tokens/s per backbone at a preset's sizes: a short, fixed number of LM batches.

The model, loader (LMDataLoader, the preset's bs x bptt) and Learner are the pipeline's own
(`pipeline.training.lm.lm_learner`); the token stream is random ids over the preset's vocabulary size, so
no tokenization is timed. The first WARMUP batches are excluded (allocator, first-call costs).
The "model FLOP/s" column is the usual 6 x params x tokens/s estimate (forward 2N, backward 4N per
token): a yardstick, not a profiler measurement.

usage: python benchmarks/throughput.py [--preset cpu] [--backbones awd_lstm,gpt,bert] [--batches 12]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from fastai.callback.core import Callback

from pipeline.config import load_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.models.backbones import get_backbone
from pipeline.training.accel import resolve_precision
from pipeline.training.learner import EpochLog, count_params, fit, pick_device, seed_everything
from pipeline.training.lm import LMData, lm_learner

WARMUP = 2


class BatchClock(Callback):
    """Wall time of every training batch (synchronised on CUDA so the clock sees the kernels)."""

    def before_fit(self):
        self.times = []

    def before_batch(self):
        if self.training:
            self._sync()
            self.start = time.perf_counter()

    def after_batch(self):
        if self.training:
            self._sync()
            self.times.append(time.perf_counter() - self.start)

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def measure(preset: str, backbone_name: str, n_batches: int, overrides: list[str], precision: str = "fp32") -> dict:
    cfg = load_config(preset, [f"model.backbone={backbone_name}", *overrides])
    pc, device = cfg.pretrain, pick_device(cfg.device)
    seed_everything(cfg.seed)
    backbone = get_backbone(backbone_name)
    vocab = pc.max_vocab
    arch = backbone.make_arch(vocab, cfg.model, WORD_SPECIALS)
    model = backbone.build_lm(arch)
    # one epoch of exactly n_batches: bs rows of n_batches * bptt (+1 for the shifted target)
    stream = torch.randint(WORD_SPECIALS.n_reserved, vocab, (pc.bs * (n_batches * pc.bptt + 1),))
    data = LMData(list(stream.split(5000)), list(stream[: pc.bs * (pc.bptt + 1)].split(5000)))
    precision = resolve_precision(precision, backbone, device)  # "auto": what a run picks on this device
    learn = lm_learner(backbone, model, arch, data, pc.bs, pc.bptt, pc.wd, device, WORD_SPECIALS, cfg.seed,
                       precision=precision)
    clock = BatchClock()
    learn.add_cb(clock)
    fit(learn, 1, pc.lr, pc.schedule, "bench", EpochLog("bench"))
    timed = clock.times[WARMUP:]
    tokens_per_sec = len(timed) * pc.bs * pc.bptt / sum(timed)
    params = count_params(model)
    return {"backbone": backbone_name, "preset": preset, "device": str(device), "precision": precision, "params": params,
            "vocab": vocab, "bs": pc.bs, "bptt": pc.bptt, "timed_batches": len(timed),
            "tokens_per_sec": round(tokens_per_sec, 1),
            "model_gflops_per_sec": round(6 * params * tokens_per_sec / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--backbones", default="awd_lstm,gpt,bert")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--precision", default="fp32", help="fp32 (default), bf16, or auto (a run's choice here)")
    args = parser.parse_args()
    rows = [measure(args.preset, b, args.batches, args.overrides, args.precision) for b in args.backbones.split(",")]
    for row in rows:
        print(json.dumps(row))
    print("\n| backbone | params | bs x bptt | tokens/s | model GFLOP/s (6N) |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} | {r['params'] / 1e6:.2f} M | {r['bs']} x {r['bptt']} | {r['tokens_per_sec']:,.0f} "
              f"| {r['model_gflops_per_sec']:.2f} |")


if __name__ == "__main__":
    main()
