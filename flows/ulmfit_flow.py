"""The ULMFiT flow: pretrain -> adapt -> classify, each a cached Prefect task."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

from prefect import flow, task

from flows.caching import cache_key_fn, needs_refresh, stage_key
from pipeline.config import STAGES, RunConfig, load_config, validate_config
from flows.launching import run_stage  # in process, or under torchrun when cfg.nproc > 1

StageName = Literal["pretrain", "adapt", "classify"]


def _task_options(name: str):
    return dict(name=name, cache_key_fn=cache_key_fn, persist_result=True, cache_expiration=None,
                retries=0, log_prints=True)


@task(**_task_options("pretrain"))
def pretrain_task(cfg_json: str, out_dir: str, cache_key: str) -> dict:
    return run_stage("pretrain", validate_config(json.loads(cfg_json)), None, out_dir, cache_key)


@task(**_task_options("adapt"))
def adapt_task(cfg_json: str, upstream: str, out_dir: str, cache_key: str) -> dict:
    return run_stage("adapt", validate_config(json.loads(cfg_json)), upstream, out_dir, cache_key)


@task(**_task_options("classify"))
def classify_task(cfg_json: str, upstream: str, out_dir: str, cache_key: str) -> dict:
    return run_stage("classify", validate_config(json.loads(cfg_json)), upstream, out_dir, cache_key)


TASKS = {"pretrain": pretrain_task, "adapt": adapt_task, "classify": classify_task}


def _forced(stage: str, rerun: Optional[str]) -> bool:
    """--rerun STAGE recomputes that stage and everything downstream of it."""
    return rerun is not None and STAGES.index(stage) >= STAGES.index(rerun)


@flow(name="ulmfit", log_prints=True, persist_result=True)
def ulmfit_flow(preset: str = "cpu", overrides: Optional[list[str]] = None, rerun: Optional[StageName] = None,
                out_dir: Optional[str] = None) -> dict:
    """Pretrain a language model, adapt it to the target domain, fine-tune a classifier."""
    cfg = load_config(preset, overrides or [])
    return run_stages(cfg, out_dir or f"runs/{preset}", rerun)


def run_stages(cfg: RunConfig, out_dir: str, rerun: Optional[str] = None, stage_dirs: Optional[dict] = None) -> dict:
    """Run the stages in order; `stage_dirs` (stage -> folder) lets runs share stage folders (compare)."""
    run_dir = Path(out_dir).expanduser().resolve()
    cfg_json, upstream, summary = cfg.model_dump_json(), None, {}
    for stage in STAGES:
        target = str(Path(stage_dirs[stage]).resolve()) if stage_dirs else str(run_dir / stage)
        key = stage_key(stage, cfg, upstream)
        refresh = _forced(stage, rerun) or needs_refresh(target, key)
        stage_task = TASKS[stage].with_options(refresh_cache=refresh)
        args = (cfg_json, target, key) if upstream is None else (cfg_json, upstream, target, key)
        start = time.perf_counter()
        state = stage_task(*args, return_state=True)
        result = state.result()  # re-raises the stage's error
        summary[stage] = {**result, "state": state.name, "seconds": time.perf_counter() - start}
        upstream = result["path"]
    return summary
