"""fp32 vs bf16 autocast, side by side: training tokens/s and validation loss after the same steps.

For each backbone, at a preset's sizes, on real WikiText-2 tokens (the stage-1 tokenizer and
vocabulary): the same initial weights, the same batches in the same order and the same one-cycle
schedule are trained once per precision, alternating fp32, bf16, fp32, bf16, ... so that both see
the same machine load. Timed: every training batch after the first WARMUP (BatchClock), plus
the held-out pass. Reported: median tokens/s over the repeats, and the held-out loss of each run
(bf16 runs are evaluated in bf16, as the pipeline does).

usage: python benchmarks/precision.py [--preset cpu] [--backbones awd_lstm,gpt,bert] [--batches 60] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.throughput import WARMUP, BatchClock
from pipeline.config import load_config
from pipeline.data.encoders import fit_encoder
from pipeline.models.backbones import get_backbone
from pipeline.stages.pretrain import corpus_texts
from pipeline.training.accel import cpu_has_bf16, cpu_model
from pipeline.training.learner import EpochLog, count_params, fit, pick_device, seed_everything
from pipeline.training.lm import LMData, lm_learner


def token_data(cfg, n_batches: int):
    """(encoder, LMData): exactly n_batches of training windows and a fixed held-out slice."""
    pc = cfg.pretrain
    train_texts, valid_texts = corpus_texts(cfg)
    encoder = fit_encoder(cfg.tokenizer, train_texts, pc.min_freq, pc.max_vocab, cfg.cache_dir, f"{pc.corpus}/train")
    stream = torch.cat([torch.from_numpy(d) for d in encoder.encode(train_texts, f"{pc.corpus}/train")])
    valid = torch.cat([torch.from_numpy(d) for d in encoder.encode(valid_texts, f"{pc.corpus}/valid")])
    need = pc.bs * (n_batches * pc.bptt + 1)
    if len(stream) < need:
        raise SystemExit(f"only {len(stream)} training tokens; need {need}: raise pretrain.max_docs")
    return encoder, LMData(list(stream[:need].split(10_000)), list(valid[: 20 * pc.bs * pc.bptt].split(10_000)))


def one_run(cfg, backbone_name: str, encoder, data: LMData, precision: str) -> dict:
    pc, device = cfg.pretrain, pick_device(cfg.device)
    seed_everything(cfg.seed)  # same initial weights and batch order for both precisions
    backbone = get_backbone(backbone_name)
    arch = backbone.make_arch(len(encoder.itos), cfg.model, encoder.specials)
    model = backbone.build_lm(arch)
    learn = lm_learner(backbone, model, arch, data, pc.bs, pc.bptt, pc.wd, device, encoder.specials, cfg.seed,
                       precision=precision)
    clock = BatchClock()
    learn.add_cb(clock)
    fit(learn, 1, pc.lr, pc.schedule, "bench", EpochLog("bench"))
    timed, n_steps = clock.times[WARMUP:], len(clock.times)  # validate() runs before_fit: read the clock first
    start = time.perf_counter()
    loss, acc, _ = learn.validate()
    return {"backbone": backbone_name, "precision": precision, "params": count_params(model),
            "train_tokens_per_sec": len(timed) * pc.bs * pc.bptt / sum(timed),
            "valid_loss": float(loss), "valid_accuracy": float(acc),
            "valid_seconds": time.perf_counter() - start, "steps": n_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--backbones", default="awd_lstm,gpt,bert")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(f"{cpu_model()}; torch {torch.__version__}, threads {torch.get_num_threads()}, native CPU bf16: {cpu_has_bf16()}")
    summary = []
    for name in args.backbones.split(","):
        cfg = load_config(args.preset, [f"model.backbone={name}", *args.overrides])
        encoder, data = token_data(cfg, args.batches)
        runs = {"fp32": [], "bf16": []}
        for _ in range(args.repeats):
            for precision in ("fp32", "bf16"):
                row = one_run(cfg, name, encoder, data, precision)
                runs[precision].append(row)
                print(json.dumps(row), flush=True)
        fp32, bf16 = (statistics.median(r["train_tokens_per_sec"] for r in runs[p]) for p in ("fp32", "bf16"))
        loss32, loss16 = (statistics.mean(r["valid_loss"] for r in runs[p]) for p in ("fp32", "bf16"))
        summary.append((name, runs["fp32"][0]["params"], fp32, bf16, loss32, loss16))
    print(f"\n{args.batches} training batches per run, {args.repeats} runs per precision, alternating\n")
    print("| backbone | params | fp32 tokens/s | bf16 tokens/s | speed-up | fp32 valid loss | bf16 valid loss | loss difference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, params, fp32, bf16, loss32, loss16 in summary:
        print(f"| {name} | {params / 1e6:.2f} M | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}x | {loss32:.4f} | "
              f"{loss16:.4f} | {100 * (loss16 - loss32) / loss32:+.2f} % |")


if __name__ == "__main__":
    main()
