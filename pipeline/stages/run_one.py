"""Run one stage in this process: the entry point `torchrun` starts once per rank.

    python -m pipeline.stages.run_one STAGE --config cfg.json [--upstream DIR] --out DIR [--cache-key KEY]
    torchrun --standalone --nproc_per_node 2 -m pipeline.stages.run_one STAGE ...   # data-parallel

Each rank joins the process group (gloo on CPU, nccl on CUDA), builds the stage's StageContext
(checkpointer included: rank 0 checkpoints every epoch into <out>.partial, and a rerun of the
same command resumes there), trains on its shard, and only rank 0 writes the stage folder.
Plain Python, no Prefect: the flow starts this as a subprocess when `nproc > 1` and then reads
the artifact, so a stage never inherits a parent's CUDA state. Errors the user can fix exit with
status 2 and one `ulmfit: error: ...` line.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.config import validate_config
from pipeline.errors import UlmfitError
from pipeline.stages.context import make_context
from pipeline.stages.registry import run_stage, stage_names
from pipeline.training import ranks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.run_one", description="run one ulmfit stage")
    parser.add_argument("stage", choices=stage_names())
    parser.add_argument("--config", required=True, help="JSON file of a full RunConfig (cfg.model_dump_json())")
    parser.add_argument("--upstream", help="the folder of the stage it builds on")
    parser.add_argument("--out", required=True, help="this stage's folder")
    parser.add_argument("--cache-key", default="", help="written into manifest.json; keys the checkpoints")
    return parser


def _exit_with_torchrun() -> None:
    """torchrun starts each rank in a session of its own, so a kill -9 of torchrun (or of the run that
    started it) would leave the ranks training on as orphans, writing the checkpoints a rerun
    resumes from. On Linux, ask the kernel to kill this rank when torchrun dies."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # torchrun died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    _exit_with_torchrun()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = validate_config(json.loads(Path(args.config).read_text()))
        from pipeline.training.learner import pick_device  # fastai: only once the config is known to be good

        ranks.init(pick_device(cfg.device))
        rank = ranks.rank()
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S"))
        result = run_stage(make_context(args.stage, cfg, args.out, args.upstream, args.cache_key, resumable=True))
    except UlmfitError as err:
        print(f"ulmfit: error: {err}", file=sys.stderr)
        return 2
    finally:
        ranks.shutdown()
    if rank == 0:
        print(json.dumps({"stage": result.stage, "path": result.path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
