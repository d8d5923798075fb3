"""The GPU check: at most 10 minutes on one GPU, run whenever a GPU is lent (issue 22).

Prints, per backbone and per preset size (`cpu`, `full`), the LM training tokens/s in the precision
`precision=auto` picks on this GPU and the peak GPU memory of those batches; then one short
end-to-end run (`ulmfit run --preset cpu`, every stage on the GPU) with its per-stage metrics and
wall times. The output is what BENCHMARKS.md's GPU section quotes, with the device it names.

usage: python -m benchmarks.gpu_check [--batches 20] [--out runs/gpu-check] [--skip-run]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.throughput import measure
from pipeline.artifacts.stage_folder import read_metrics
from pipeline.models.backbones import REGISTRY
from pipeline.stages.registry import REGISTRY as STAGES


def throughput_rows(batches: int) -> list[dict]:
    rows = []
    for preset in ("cpu", "full"):
        for name in REGISTRY:
            torch.cuda.reset_peak_memory_stats()
            row = measure(preset, name, batches, ["device=cuda"], precision="auto")
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def end_to_end(out: Path) -> dict:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "cpu", "--out", str(out), "--set", "device=cuda"]
    subprocess.run(cmd, check=True)
    summary = {"wall_seconds": round(time.perf_counter() - start, 1)}
    for stage, entry in STAGES.items():  # each registered stage's headline metric
        key = entry.headline[0]
        metrics = read_metrics(out / stage)
        summary[stage] = {key: metrics[key], "wall_seconds": round(metrics["wall_seconds"], 1),
                          "precision": metrics.get("precision")}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--skip-run", action="store_true", help="throughput only, no end-to-end run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here; run it on the GPU machine", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = throughput_rows(args.batches)
    print("\n| preset sizes | backbone | params | precision | tokens/s | peak GiB |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['preset']} | {r['backbone']} | {r['params'] / 1e6:.1f} M | {r['precision']} | "
              f"{r['tokens_per_sec']:,.0f} | {r['peak_gib']} |")
    if not args.skip_run:
        print(json.dumps(end_to_end(Path(args.out)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
