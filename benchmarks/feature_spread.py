"""Does a language model's encoder give features that vary between reviews? (RESULTS.md, the bert fix)

Trains the named LM stages (default: stage 1 only) into OUT, or reuses them when OUT already holds them,
then reads the classifier's pooled features (the head's input, before any fine-tuning, in fp32) of the
classify stage's labeled sample and validation hold-out. Prints the features' between-review standard
deviation (median over features) and a linear probe's validation accuracy (standardised features,
logistic regression with C chosen on validation: the classify stage's probe, `pipeline.training.baselines`).
A masked LM trained at too high a rate gives a spread of 1e-6 or less: no head can read that.

usage: python -m benchmarks.feature_spread OUT [--stages pretrain,adapt] [--preset cpu] [--set section.field=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pipeline.artifacts.model_file import load_model_file
from pipeline.config import load_config
from pipeline.data.encoders import encoder_from_state
from pipeline.stages.classify import build_model, encode, loader
from pipeline.stages.classify_data import stage_splits
from pipeline.stages.context import make_context
from pipeline.stages.registry import run_stage
from pipeline.training.baselines import fit_tuned_logistic_regression, pooled_features


def lm_stages(cfg, out: Path, stages: list[str]) -> tuple[Path, dict]:
    """Each stage's folder under OUT (trained unless already complete) and its metrics."""
    upstream, metrics = None, {}
    for stage in stages:
        folder = out / stage
        if not (folder / "metrics.json").exists():
            run_stage(make_context(stage, cfg, folder, upstream))
        upstream, metrics[stage] = folder, json.loads((folder / "metrics.json").read_text())
    return upstream, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--stages", default="pretrain", help="comma-separated LM stages, in order")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    cfg = load_config(args.preset, args.overrides)  # features are read without autocast: fp32
    lm_dir, metrics = lm_stages(cfg, Path(args.out), args.stages.split(","))
    lm, splits = load_model_file(lm_dir, expect_kind="lm"), stage_splits(cfg)
    encoder = encoder_from_state(lm.tokenizer, lm.vocab, cfg.cache_dir, cfg.tokenizer.n_workers)
    backbone, model = build_model(lm, len(splits.classes), cfg.classify, encoder.specials)
    features = {}
    for name in ("train", "valid"):
        items = encode(getattr(splits, name), encoder, splits.classes, cfg.classify, f"spread-{name}", "forward")
        batches = loader(items, cfg.classify, False, "cpu", encoder.specials.pad)
        features[name] = pooled_features(model, backbone, batches)
    x_train, y_train = features["train"]
    _, probe = fit_tuned_logistic_regression(x_train, y_train, *features["valid"], standardize=True)
    row = {"stages": args.stages, "overrides": args.overrides,
           "perplexity": {s: m.get("valid_perplexity", m.get("held_out_perplexity_after")) for s, m in metrics.items()},
           "lr": {s: m.get("lr") for s, m in metrics.items()},
           "spread_median_sd": float(np.median(x_train.std(axis=0))),
           "abs_mean_median": float(np.median(np.abs(x_train.mean(axis=0)))),
           "probe_valid_accuracy": probe["valid_accuracy"], "probe_C": probe["C"],
           "n_train": len(y_train), "n_valid": len(features["valid"][1])}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
