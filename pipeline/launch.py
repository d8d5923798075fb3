"""Run one stage in this process: the entry point `torchrun` starts once per rank.

    python -m pipeline.launch STAGE --config cfg.json [--upstream DIR] --out DIR [--cache-key KEY]
    torchrun --standalone --nproc_per_node 2 -m pipeline.launch STAGE ...   # data-parallel

Each rank joins the process group (gloo on CPU, nccl on CUDA), trains on its shard and only
rank 0 writes the stage folder. Plain Python, no Prefect: the flow starts this as a subprocess
when `nproc > 1` and then reads the artifact, so a stage never inherits a parent's CUDA state.
Errors the user can fix exit with status 2 and one `ulmfit: error: ...` line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline import distributed
from pipeline.config import STAGES, validate_config
from pipeline.errors import ConfigError, UlmfitError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description="run one ulmfit stage")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", required=True, help="JSON file of a full RunConfig (cfg.model_dump_json())")
    parser.add_argument("--upstream", help="the previous stage's folder (adapt, classify)")
    parser.add_argument("--out", required=True, help="this stage's folder")
    parser.add_argument("--cache-key", default="", help="written into manifest.json")
    return parser


def run_stage(stage: str, cfg, upstream: str | None, out: str, cache_key: str = ""):
    """Run `stage` here and return its StageResult (imports the stage lazily: fastai is slow to import)."""
    from pipeline.stages import adapt, classify, pretrain

    if stage == "pretrain":
        return pretrain.run(cfg, out, cache_key)
    if not upstream:
        raise ConfigError(f"stage {stage} needs --upstream (the previous stage's folder)")
    return {"adapt": adapt, "classify": classify}[stage].run(cfg, upstream, out, cache_key)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = f"%(asctime)s [rank {distributed.rank()}] %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")
    try:
        cfg = validate_config(json.loads(Path(args.config).read_text()))
        distributed.init(cfg.device)
        result = run_stage(args.stage, cfg, args.upstream, args.out, args.cache_key)
    except UlmfitError as err:
        print(f"ulmfit: error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if distributed.rank() == 0:
        print(json.dumps({"stage": result.stage, "path": result.path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
