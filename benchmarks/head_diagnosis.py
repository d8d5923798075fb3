"""Why a classifier sits at chance: the spread of its pooled features, and its head's BatchNorm eps.

Trains the classify stage on a finished adapt folder (as `classify.run` does, into a fresh temporary
folder) and prints the between-review standard deviation of the features the head reads in
evaluation, next to the test accuracy. With `--eps E` every BatchNorm layer of the head uses eps E
instead of torch's 1e-5: a feature whose between-review SD is far below sqrt(eps) is flattened
by the normalisation, whatever the weights (RESULTS.md, "Why the pretrained bert's classifier fails").

usage: python -m benchmarks.head_diagnosis ADAPT_DIR [--eps 1e-12] [--preset cpu] [--set section.field=value ...]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from pipeline.config import load_config
from pipeline.stages import classify
from pipeline.stages.context import make_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapt_dir")
    parser.add_argument("--eps", type=float, help="eps of the head's BatchNorm layers (default: torch's 1e-5)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    build, pooled = classify.build_model, []

    def build_and_watch(*a, **k):
        backbone, model = build(*a, **k)
        head = backbone.classifier_head(model)
        head.register_forward_pre_hook(lambda _m, inputs: None if model.training else pooled.append(inputs[0].detach().float()))
        for layer in head.modules():
            if isinstance(layer, nn.BatchNorm1d) and args.eps is not None:
                layer.eps = args.eps
        return backbone, model

    classify.build_model = build_and_watch
    cfg = load_config(args.preset, args.overrides)
    out = Path(tempfile.mkdtemp(prefix="head-diagnosis-")) / "classify"
    metrics = classify.run(make_context("classify", cfg, out, args.adapt_dir)).metrics
    features = torch.cat(pooled[-40:])  # the last evaluation's batches: the test set
    spread = features.std(dim=0)
    print(f"pooled features in evaluation: between-review SD per feature median {spread.median():.3g} "
          f"(max {spread.max():.3g}) around |mean| {features.mean(dim=0).abs().median():.3g}; "
          f"BatchNorm eps {args.eps or 1e-5:g} = SD floor {(args.eps or 1e-5) ** 0.5:.3g}")
    print(f"test accuracy {metrics['test_accuracy']:.4f}, linear probe {metrics.get('probe_test_accuracy')}, "
          f"confusion {metrics.get('confusion_matrix')}, precision {cfg.precision}")


if __name__ == "__main__":
    main()
