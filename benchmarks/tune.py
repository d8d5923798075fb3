"""Tuning log: run named configurations of a preset and record validation and test accuracy and wall time.

Each configuration is a name and a list of `section.field=value` overrides. Its stages run in
`OUT/<name>/<stage>` without Prefect, through the stage store (`pipeline.artifacts.store`): a stage another
configuration already computed with the same settings is linked in, not retrained, so classifier
recipes on one language model cost one LM. Selection is by `valid_accuracy` (the classifier's last
epoch on its validation hold-out); the test accuracy is recorded, never used to choose. Every
finished configuration appends a JSON line to OUT/tune.jsonl, and the table of all lines so far
(those of earlier invocations included) is printed at the end.

usage: python -m benchmarks.tune --preset cpu --out runs/tune NAME="k=v k=v" [NAME="..." ...]
       python -m benchmarks.tune --out runs/tune --table        # print the log so far
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from pathlib import Path

import pandas as pd

from pipeline.artifacts.layout import stage_folders
from pipeline.artifacts.stage_folder import read_metrics
from pipeline.artifacts.store import computing, keep, restore, stage_key
from pipeline.config import load_config
from pipeline.stages.context import make_context
from pipeline.stages.registry import REGISTRY, run_stage

log = logging.getLogger("ulmfit")


def run_config(preset: str, name: str, overrides: list[str], out: Path) -> dict:
    cfg = load_config(preset, overrides)
    folders, walls, computed = stage_folders(out / name), {}, []
    for stage_name, stage in REGISTRY.items():
        folder = folders[stage_name]
        upstream = folders[stage.upstream] if stage.upstream else None
        key = stage_key(stage_name, cfg, upstream)
        start = time.perf_counter()
        with computing(key, cfg):
            if not restore(folder, key, cfg):
                run_stage(make_context(stage_name, cfg, folder, upstream, key))
                keep(folder, key, cfg)
                computed.append(stage_name)
        walls[stage_name] = read_metrics(folder)["wall_seconds"]
        log.info("tune %s: %s %s in %.0fs", name, stage_name, "computed" if stage_name in computed else "cached",
                 time.perf_counter() - start)
    cls = read_metrics(folders["classify"])
    lm = {s: read_metrics(folders[s]) for s in ("pretrain", "adapt")}
    return {"name": name, "preset": preset, "overrides": overrides, "valid_accuracy": cls.get("valid_accuracy"),
            "test_accuracy": cls["test_accuracy"], "test_size": cls["test_size"],
            "tfidf_test_accuracy": cls.get("tfidf_test_accuracy"), "probe_test_accuracy": cls.get("probe_test_accuracy"),
            "probe_valid_accuracy": cls.get("probe_valid_accuracy"),
            "lm_train_tokens": {s: lm[s].get("train_tokens") for s in lm},
            "pretrain_ppl": lm["pretrain"]["valid_perplexity"], "adapt_ppl": lm["adapt"]["held_out_perplexity_after"],
            "wall_seconds": walls, "total_wall_seconds": sum(walls.values()), "computed": computed}


def table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    lines = ["| configuration | valid acc. | test acc. (n) | probe | TF-IDF | stage-1 / 2 ppl | wall s: 1 / 2 / 3 (total) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in frame.itertuples():
        w = r.wall_seconds
        lines.append(f"| {r.name} | {100 * (r.valid_accuracy or 0):.2f} | {100 * r.test_accuracy:.2f} ({r.test_size}) | "
                     f"{100 * (r.probe_test_accuracy or 0):.2f} | {100 * (r.tfidf_test_accuracy or 0):.2f} | "
                     f"{r.pretrain_ppl:.1f} / {r.adapt_ppl:.1f} | {w['pretrain']:.0f} / {w['adapt']:.0f} / "
                     f"{w['classify']:.0f} ({r.total_wall_seconds:.0f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default="runs/tune")
    parser.add_argument("--table", action="store_true", help="only print the log so far")
    parser.add_argument("configs", nargs="*", help='NAME="section.field=value ..."')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "tune.jsonl"
    for spec in [] if args.table else args.configs:
        name, _, sets = spec.partition("=")
        row = run_config(args.preset, name, shlex.split(sets), out)
        with open(log_file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    print(table(rows))


if __name__ == "__main__":
    main()
