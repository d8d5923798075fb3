"""Where the default run's wall time and memory go: a per-stage profile of `ulmfit run`.

Runs the flow in this process (the same call `ulmfit run` makes) with timers attached:
- every fastai Learner gets a PhaseTimer callback (through fastai's default callbacks) that
  splits each training batch into forward (model), loss (softmax + cross-entropy), backward,
  optimizer step and the rest (data loading, callbacks), and times evaluation batches;
- tokenization (the encoders' `encode`: spaCy, cache, numericalize), data loading (parquet),
  artifact I/O (writing stage folders, loading and verifying model files) are wrapped;
- a few training batches per stage run under torch.profiler to split the forward+backward time
  between the output layer (decoder matmul + log-softmax + NLL) and the rest of the model;
- a sampler thread records the process tree's RSS every 0.2 s, tagged with the running phase.
Prefect's share is the flow's wall time minus the stages' own wall time.

usage: python benchmarks/profile_run.py [--preset cpu] [--set k=v ...] [--out DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections import defaultdict

import psutil
import torch
from fastai.callback.core import Callback

TOTALS: dict[tuple[str, str], float] = defaultdict(float)  # (stage, part) -> seconds
PEAK_RSS: dict[str, float] = defaultdict(float)  # phase -> GB
STATE = {"stage": "flow", "phase": "flow"}
OUTPUT_OPS = ("aten::log_softmax", "aten::_log_softmax", "aten::nll_loss", "aten::_log_softmax_backward_data",
              "aten::nll_loss_backward", "aten::nll_loss_forward", "aten::cross_entropy_loss")


@contextlib.contextmanager
def part(name: str):
    """Time a block as `name` of the current stage and tag memory samples with it."""
    before, start = STATE["phase"], time.perf_counter()
    STATE["phase"] = f"{STATE['stage']}:{name}"
    try:
        yield
    finally:
        TOTALS[(STATE["stage"], name)] += time.perf_counter() - start
        STATE["phase"] = before


def timed(owner, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        if STATE["phase"] != STATE["stage"]:  # nested inside another timed part, or in a training batch
            return original(*args, **kwargs)
        with part(name):
            return original(*args, **kwargs)
    setattr(owner, attr, wrapper)


class PhaseTimer(Callback):
    """forward / loss / backward / optimizer / other per training batch; whole evaluation batches."""

    order = 95
    PROFILED_BATCHES = (5, 10)  # per stage: after warm-up, these batches run under torch.profiler

    def before_fit(self):
        self.n_train, self.prof = 0, None
        # An LM's output layer is the Linear whose width is the embedding's vocabulary size.
        vocab = {m.num_embeddings for m in self.model.modules() if isinstance(m, torch.nn.Embedding)}
        widths = {m.out_features for m in self.model.modules() if isinstance(m, torch.nn.Linear)}
        self.vocab = max(vocab & widths, default=None)

    def before_batch(self):
        self.t0 = time.perf_counter()
        STATE["phase"] = f"{STATE['stage']}:{'train' if self.training else 'evaluation'}"
        if (self.training and self.vocab and self.n_train == self.PROFILED_BATCHES[0]
                and not PROFILE_DONE.get(STATE["stage"])):
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

    def after_pred(self):
        self.t1 = time.perf_counter()

    def after_loss(self):
        self.t2 = time.perf_counter()

    def after_backward(self):
        self.t3 = time.perf_counter()

    def after_step(self):
        self.t4 = time.perf_counter()

    def after_batch(self):
        end, stage = time.perf_counter(), STATE["stage"]
        if not self.training:
            TOTALS[(stage, "evaluation")] += end - self.t0
            STATE["phase"] = stage
            return
        TOTALS[(stage, "forward")] += self.t1 - self.t0
        TOTALS[(stage, "loss (softmax + CE)")] += self.t2 - self.t1
        TOTALS[(stage, "backward")] += self.t3 - self.t2
        TOTALS[(stage, "optimizer")] += self.t4 - self.t3
        TOTALS[(stage, "train: data + callbacks")] += end - self.t4
        STATE["phase"] = stage
        self.n_train += 1
        if self.prof is not None and self.n_train == self.PROFILED_BATCHES[1]:
            self.prof.__exit__(None, None, None)
            OUTPUT_SHARE[stage] = output_share(self.prof, str(self.vocab))
            PROFILE_DONE[stage], self.prof = True, None


PROFILE_DONE: dict[str, bool] = {}
OUTPUT_SHARE: dict[str, float] = {}


def output_share(prof, vocab: str) -> float:
    """Share of the profiled CPU time (ops' self time) spent in the output layer: the matmuls with a
    vocabulary-sized dimension (decoder / LM head, forward and backward) plus log-softmax and NLL."""
    total = out = 0.0
    for evt in prof.key_averages(group_by_input_shape=True):
        self_time = evt.self_cpu_time_total
        total += self_time
        vocab_sized = vocab in str(evt.input_shapes)
        if evt.key in OUTPUT_OPS or (vocab_sized and evt.key in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul",
                                                                  "aten::bmm", "aten::_addmm_activation")):
            out += self_time
    return out / total if total else 0.0


def sample_memory(stop: threading.Event) -> None:
    me = psutil.Process()
    while not stop.is_set():
        try:
            rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            rss = me.memory_info().rss
        phase = STATE["phase"]
        PEAK_RSS[phase] = max(PEAK_RSS[phase], rss / 1e9)
        PEAK_RSS["(whole run)"] = max(PEAK_RSS["(whole run)"], rss / 1e9)
        stop.wait(0.2)


def install() -> None:
    import pandas as pd
    from fastai.learner import defaults

    import pipeline.artifacts.stage_folder as artifacts
    import pipeline.data.encoders as text

    defaults.callbacks = list(defaults.callbacks) + [PhaseTimer]
    for cls in (text.WordEncoder, text.SubwordEncoder):
        timed(cls, "encode", "tokenization")
    timed(pd, "read_parquet", "data loading")
    timed(artifacts, "_write_folder", "artifact I/O")
    timed(torch, "load", "artifact I/O")
    timed(artifacts, "verify_folder", "artifact I/O")


def stage_clock() -> None:
    """Set STATE['stage'] while each stage's entry point runs, and record its wall time."""
    from pipeline.stages.registry import Stage

    original = Stage.entry

    def entry(self):
        run = original(self)

        def timed_run(ctx):
            STATE["stage"] = STATE["phase"] = self.name
            start = time.perf_counter()
            try:
                return run(ctx)
            finally:
                TOTALS[(self.name, "stage wall")] += time.perf_counter() - start
                STATE["stage"] = STATE["phase"] = "flow"
        return timed_run
    Stage.entry = entry


def report(flow_secs: float) -> dict:
    stages = ["pretrain", "adapt", "classify"]
    parts = ["tokenization", "data loading", "forward", "loss (softmax + CE)", "backward", "optimizer",
             "train: data + callbacks", "evaluation", "artifact I/O"]
    lines = ["| part | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages)]
    for name in parts + ["other (samples, plots, model building)"]:
        cells = []
        for s in stages:
            wall = TOTALS[(s, "stage wall")]
            secs = (wall - sum(TOTALS[(s, p)] for p in parts)) if name.startswith("other") else TOTALS[(s, name)]
            cells.append(f"{secs:,.1f} s ({100 * secs / wall:.0f} %)" if wall else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **stage wall** | " + " | ".join(f"**{TOTALS[(s, 'stage wall')]:,.1f} s**" for s in stages) + " |")
    lines.append("| output layer, share of profiled train-batch CPU time | "
                 + " | ".join(f"{100 * OUTPUT_SHARE.get(s, 0):.0f} %" for s in stages) + " |")
    stage_total = sum(TOTALS[(s, "stage wall")] for s in stages)
    lines.append(f"\nFlow wall {flow_secs:,.1f} s; stages {stage_total:,.1f} s; Prefect and the rest of the flow "
                 f"{flow_secs - stage_total:,.1f} s ({100 * (flow_secs - stage_total) / flow_secs:.1f} %).")
    lines.append("\n| phase | peak RSS, process tree (GB) |\n| --- | --- |")
    lines += [f"| {k} | {v:.2f} |" for k, v in sorted(PEAK_RSS.items(), key=lambda kv: -kv[1])[:12]]
    print("\n".join(lines))
    return {"totals": {f"{s}/{p}": v for (s, p), v in TOTALS.items()}, "peak_rss_gb": dict(PEAK_RSS),
            "output_share": OUTPUT_SHARE, "flow_seconds": flow_secs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/profile")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    import flows  # noqa: F401  (Prefect defaults)
    from pipeline.config import load_config

    cfg = load_config(args.preset, args.overrides)
    install()
    stage_clock()
    stop = threading.Event()
    threading.Thread(target=sample_memory, args=(stop,), daemon=True).start()
    from flows.ulmfit_flow import ulmfit_config_flow
    from pipeline.validate import check_run

    start = time.perf_counter()
    check_run(cfg, args.out)  # what `ulmfit run` does before the flow
    ulmfit_config_flow(config=cfg, out_dir=args.out, rerun="pretrain")  # every stage computed, none from the store
    flow_secs = time.perf_counter() - start
    stop.set()
    numbers = report(flow_secs)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(numbers, fh, indent=2)


if __name__ == "__main__":
    main()
