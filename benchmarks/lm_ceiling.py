"""The LM stage's training tokens/s against a bare torch loop on the same model: where the difference goes.

All sides train the same AWD-LSTM language model (the preset's sizes and vocabulary size, the same
initial weights), on the same token stream cut the same way (bs rows, bptt windows, the hidden state
carried across batches), in the precision `auto` picks on this CPU (or --precision):

- ours:           `pipeline.training.lm.lm_learner` + `pipeline.training.learner.fit`, what stages 1-2 run: fastai's
                  Learner, LMDataLoader, Adam, one-cycle, AR/TAR callbacks, the stage's callbacks.
- bare:           a plain torch loop: forward, cross-entropy + the same AR/TAR terms, backward,
                  torch.optim.AdamW (foreach), OneCycleLR. Same regularisation, no fastai.
- bare-no-dropout: the bare loop on the model built with every dropout at 0 (weight-drop, embedding,
                  input, hidden and output dropout): what AWD-LSTM's regularisation costs in time.

Sides alternate (ours, bare, bare-no-dropout, then again) so the machine's load hits all alike.
Tokens/s counts batches WARMUP.. to the end by wall clock between batch ends, so data loading and
every callback between batches are inside it. The token stream is random ids: speed does not
depend on which tokens they are.

usage: python -m benchmarks.lm_ceiling [--preset cpu] [--batches 40] [--rounds 2] [--precision auto]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from pipeline.config import load_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.models.backbones import get_backbone
from pipeline.training.accel import cpu_model, resolve_precision
from pipeline.training.learner import EpochLog, count_params, fit, pick_device, seed_everything
from pipeline.training.lm import LMData, lm_learner

WARMUP = 3


class BatchEnds(Callback):
    """perf_counter at the end of every training batch."""

    def before_fit(self):
        self.ends = []

    def after_batch(self):
        if self.training:
            self.ends.append(time.perf_counter())


def tokens_per_sec(ends: list[float], bs: int, bptt: int) -> float:
    timed = ends[WARMUP - 1:]
    return (len(timed) - 1) * bs * bptt / (timed[-1] - timed[0])


def stream_for(n_batches: int, bs: int, bptt: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(WORD_SPECIALS.n_reserved, vocab, (bs * (n_batches * bptt + 1),), generator=gen)


def run_ours(cfg, arch: dict, state: dict, stream: torch.Tensor, precision: str) -> float:
    pc, backbone, device = cfg.pretrain, get_backbone("awd_lstm"), pick_device(cfg.device)
    model = backbone.build_lm(arch)
    model.load_state_dict(state)
    data = LMData([stream], [stream[: pc.bs * (pc.bptt + 1)]])
    learn = lm_learner(backbone, model, arch, data, pc.bs, pc.bptt, pc.wd, device, WORD_SPECIALS, cfg.seed,
                       precision=precision)
    clock = BatchEnds()
    learn.add_cb(clock)
    fit(learn, 1, pc.lr, pc.schedule, "bench", EpochLog("bench"))
    return tokens_per_sec(clock.ends, pc.bs, pc.bptt)


def run_bare(cfg, arch: dict, state: dict, stream: torch.Tensor, precision: str) -> float:
    """A plain torch loop over the same batches: the ceiling for this model on this machine."""
    pc = cfg.pretrain
    model = get_backbone("awd_lstm").build_lm(arch)
    model.load_state_dict(state)
    model.train()
    rows = stream[: len(stream) // pc.bs * pc.bs].view(pc.bs, -1)  # row r continues the same text
    n_batches = (rows.shape[1] - 1) // pc.bptt
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": pc.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=pc.lr, betas=(0.8, 0.99), eps=1e-5, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.lr, total_steps=n_batches, pct_start=0.25,
                                                cycle_momentum=False)
    model.reset()
    ends = []
    for k in range(n_batches):
        x = rows[:, k * pc.bptt:(k + 1) * pc.bptt]
        y = rows[:, k * pc.bptt + 1:(k + 1) * pc.bptt + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, raw_out, dropped_out = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = loss + 2.0 * dropped_out.float().pow(2).mean()  # AR, as fastai's RNNRegularizer(alpha=2)
        loss = loss + 1.0 * (raw_out[:, 1:] - raw_out[:, :-1]).float().pow(2).mean()  # TAR (beta=1)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return tokens_per_sec(ends, pc.bs, pc.bptt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    cfg = load_config(args.preset, ["model.backbone=awd_lstm", *args.overrides])
    pc, backbone = cfg.pretrain, get_backbone("awd_lstm")
    precision = resolve_precision(args.precision, backbone, pick_device(cfg.device))
    seed_everything(cfg.seed)
    arch = backbone.make_arch(pc.max_vocab, cfg.model, WORD_SPECIALS)
    no_dropout = {**arch, "drop_mult": 0.0}
    state = backbone.build_lm(arch).state_dict()
    stream = stream_for(args.batches, pc.bs, pc.bptt, pc.max_vocab, cfg.seed)
    sides = {"ours": lambda: run_ours(cfg, arch, state, stream, precision),
             "bare": lambda: run_bare(cfg, arch, state, stream, precision),
             "bare-no-dropout": lambda: run_bare(cfg, no_dropout, state, stream, precision)}
    print(f"{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision}; "
          f"awd_lstm {arch['emb_sz']}/{arch['n_hid']}x{arch['n_layers']}, vocab {pc.max_vocab}, "
          f"{count_params(backbone.build_lm(arch)) / 1e6:.2f} M params, bs {pc.bs} x bptt {pc.bptt}, "
          f"{args.batches} batches ({WARMUP} untimed)")
    speeds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, side in sides.items():
            speeds[name].append(side())
            print(json.dumps({"round": r, "side": name, "tokens_per_sec": round(speeds[name][-1], 1)}), flush=True)
    bare = statistics.median(speeds["bare"])
    print("\n| side | tokens/s (median) | each round | vs bare |\n| --- | --- | --- | --- |")
    for name, values in speeds.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {med / bare:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "precision": precision, "speeds": speeds}, f, indent=1)


if __name__ == "__main__":
    main()
