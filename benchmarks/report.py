"""Print a markdown table of the headline numbers of one or more run directories.

usage: python benchmarks/report.py runs/cpu runs/cpu-scratch
Every number is read from the stage artifacts (metrics.json), never typed in by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline.artifacts.stage_folder import read_metrics

ROWS = [
    ("pretrain wall time (s)", "pretrain", "wall_seconds", "{:.0f}"),
    ("adapt wall time (s)", "adapt", "wall_seconds", "{:.0f}"),
    ("classify wall time (s)", "classify", "wall_seconds", "{:.0f}"),
    ("stage wall time, total (s)", None, "wall_seconds", "{:.0f}"),
    ("pretrain train tokens", "pretrain", "train_tokens", "{:,}"),
    ("pretrain training tokens/s", "pretrain", "train_tokens_per_sec", "{:,.0f}"),
    ("WikiText valid perplexity", "pretrain", "valid_perplexity", "{:.1f}"),
    ("WikiText valid next-token accuracy", "pretrain", "valid_accuracy", "{:.3f}"),
    ("adapt train tokens", "adapt", "train_tokens", "{:,}"),
    ("IMDb held-out perplexity before adaptation", "adapt", "held_out_perplexity_before", "{:.1f}"),
    ("IMDb held-out perplexity after adaptation", "adapt", "held_out_perplexity_after", "{:.1f}"),
    ("labels used (balanced)", "classify", "n_labels", "{:,}"),
    ("IMDb test reviews evaluated", "classify", "test_size", "{:,}"),
    ("IMDb test accuracy", "classify", "test_accuracy", "{:.4f}"),
]


def cell(run: Path, stage: str | None, key: str, fmt: str) -> str:
    if stage is None:
        return fmt.format(sum(read_metrics(run / s)[key] for s in ("pretrain", "adapt", "classify")))
    return fmt.format(read_metrics(run / stage)[key])


def main(runs: list[str]) -> None:
    paths = [Path(r) for r in runs]
    print("| | " + " | ".join(f"`{p}`" for p in paths) + " |")
    print("| --- |" + " --- |" * len(paths))
    for label, stage, key, fmt in ROWS:
        print(f"| {label} | " + " | ".join(cell(p, stage, key, fmt) for p in paths) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
