"""Classifier recipes for the transformer backbones, on an existing adapted LM (stage 2 folder).

Measures what the issue asks to measure rather than assume: pooling (concat vs last token for
gpt; mean vs first token for bert) and ULMFiT's gradual unfreezing + discriminative LRs vs plain
full fine-tuning. Every recipe starts from the same adapted encoder, data and seed.

usage: python benchmarks/transformer_recipes.py ADAPT_DIR --preset cpu [--set k=v ...] [--out DIR]
e.g.   python benchmarks/transformer_recipes.py /work/compare-cpu/out/gpt/adapt --preset cpu \
           --set classify.n_labels=500 --set classify.n_test=1000
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from pipeline.artifacts import load_model_file
from pipeline.config import load_config
from pipeline.stages import classify
from pipeline.stages.context import make_context

POOLINGS = {"gpt": ["concat", "last"], "bert": ["mean", "first"], "awd_lstm": ["concat"]}
FULL_FT = ["classify.epochs_per_phase=[4]", "classify.lrs=[0.001]", "classify.lr_decay=1"]


def recipes(backbone: str) -> dict[str, list[str]]:
    out = {f"ulmfit, {p} pooling": [f"classify.pooling={p}"] for p in POOLINGS[backbone]}
    out[f"ulmfit lrs / 10, {POOLINGS[backbone][0]} pooling"] = [
        "classify.lrs=[0.002,0.001,0.0005,0.0002]", f"classify.pooling={POOLINGS[backbone][0]}"]
    out[f"full fine-tuning lr 1e-3, {POOLINGS[backbone][0]} pooling"] = FULL_FT + [f"classify.pooling={POOLINGS[backbone][0]}"]
    out[f"full fine-tuning lr 1e-4, {POOLINGS[backbone][0]} pooling"] = (
        FULL_FT[:1] + ["classify.lrs=[0.0001]", "classify.lr_decay=1", f"classify.pooling={POOLINGS[backbone][0]}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapt_dir")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", action="append", default=[], help="run recipes whose name contains this (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    backbone = load_model_file(Path(args.adapt_dir), expect_kind="lm").backbone
    out = Path(args.out or tempfile.mkdtemp(prefix="recipes-"))
    rows = []
    for name, extra in recipes(backbone).items():
        if args.only and not any(part in name for part in args.only):
            continue
        cfg = load_config(args.preset, args.overrides + [f"model.backbone={backbone}"] + extra)
        start = time.perf_counter()
        result = classify.run(make_context("classify", cfg, out / name.replace(" ", "_").replace(",", ""),
                                           args.adapt_dir))
        rows.append({"backbone": backbone, "recipe": name, "test_accuracy": result.metrics["test_accuracy"],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| backbone | recipe | test accuracy | seconds |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} | {r['recipe']} | {100 * r['test_accuracy']:.2f} % | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
