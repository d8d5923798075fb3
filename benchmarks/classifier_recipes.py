"""Classifier recipes on two encoders: transferred (pretrain + adapt) vs random (no transfer).

usage: python benchmarks/classifier_recipes.py runs/cpu/adapt runs/cpu-scratch/adapt [--preset cpu]

Runs stage 3 directly (no Prefect) once per recipe and encoder with the preset's labels and
test sample, and prints validation accuracy (what one would select on) and test accuracy.
Folders go to runs/recipes/.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.stages import classify
from pipeline.stages.context import make_context

RECIPES = {
    "ULMFiT gradual unfreezing, lrs 2e-2/1e-2/5e-3/2e-3": ["classify.epochs_per_phase=[1,1,1,1]", "classify.lrs=[0.02,0.01,0.005,0.002]"],
    "gradual unfreezing, lrs 2e-2/1e-2/1e-2/1e-2, last phase 2 epochs": ["classify.epochs_per_phase=[1,1,1,2]", "classify.lrs=[0.02,0.01,0.01,0.01]"],
    "all layers from the start, 4 epochs at 1e-2": ["classify.epochs_per_phase=[0,0,0,4]", "classify.lrs=[0.02,0.01,0.005,0.01]"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transferred")
    parser.add_argument("random")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for recipe, overrides in RECIPES.items():
        for encoder, adapted in (("transferred", args.transferred), ("random", args.random)):
            out = Path("runs/recipes") / f"{len(rows):02d}"
            start = time.perf_counter()
            res = classify.run(make_context("classify", load_config(args.preset, overrides), out, adapted))
            valid = pd.read_csv(out / "history.csv")["accuracy"].iloc[-1]
            rows.append({"recipe": recipe, "encoder": encoder, "valid_accuracy": round(float(valid), 4),
                         "test_accuracy": round(res.metrics["test_accuracy"], 4), "test_size": res.metrics["test_size"],
                         "seconds": round(time.perf_counter() - start)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv("runs/recipes/summary.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
