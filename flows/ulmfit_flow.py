"""The ULMFiT flow: pretrain -> adapt -> classify, each a cached Prefect task."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from prefect import flow, task

from flows.caching import cache_key_fn, needs_refresh, stage_key
from flows.params import (AdaptSettings, BackboneName, ClassifySettings, Preset, PretrainSettings, StageName,
                          typed_overrides)
from flows.reporting import report_stage, stage_progress
from pipeline.backbones import REGISTRY
from pipeline.checkpoint import resumable
from pipeline.config import STAGES, RunConfig, load_config, validate_config
from pipeline.errors import ConfigError
from pipeline.locking import run_dir_lock
from flows.launching import run_stage  # in process, or under torchrun when cfg.nproc > 1


def _task_options(name: str):
    return dict(name=name, cache_key_fn=cache_key_fn, persist_result=True, cache_expiration=None,
                retries=0, log_prints=True)


# Each task: per-epoch checkpoints in <out_dir>.partial/ (resume after a crash) and a UI progress artifact.
@task(**_task_options("pretrain"))
def pretrain_task(cfg_json: str, out_dir: str, cache_key: str) -> dict:
    cfg = validate_config(json.loads(cfg_json))
    with resumable(out_dir, cache_key), stage_progress("pretrain", cfg):
        return run_stage("pretrain", cfg, None, out_dir, cache_key)


@task(**_task_options("adapt"))
def adapt_task(cfg_json: str, upstream: str, out_dir: str, cache_key: str) -> dict:
    cfg = validate_config(json.loads(cfg_json))
    with resumable(out_dir, cache_key), stage_progress("adapt", cfg):
        return run_stage("adapt", cfg, upstream, out_dir, cache_key)


@task(**_task_options("classify"))
def classify_task(cfg_json: str, upstream: str, out_dir: str, cache_key: str) -> dict:
    cfg = validate_config(json.loads(cfg_json))
    with resumable(out_dir, cache_key), stage_progress("classify", cfg):
        return run_stage("classify", cfg, upstream, out_dir, cache_key)


TASKS = {"pretrain": pretrain_task, "adapt": adapt_task, "classify": classify_task}


def _forced(stage: str, rerun: Optional[str]) -> bool:
    """--rerun STAGE recomputes that stage and everything downstream of it."""
    return rerun is not None and STAGES.index(stage) >= STAGES.index(rerun)


@flow(name="ulmfit", log_prints=True, persist_result=True)
def ulmfit_flow(preset: Preset = "cpu", backbone: Optional[BackboneName] = None,
                pretrain: PretrainSettings = PretrainSettings(), adapt: AdaptSettings = AdaptSettings(),
                classify: ClassifySettings = ClassifySettings(), overrides: Optional[list[str]] = None,
                rerun: Optional[StageName] = None, out_dir: Optional[str] = None) -> dict:
    """Pretrain a language model, adapt it to the target domain, fine-tune a classifier.

    Args:
        preset: Starting configuration (smoke: ~1 min test run; cpu: ~20 min; full: GPU reproduction).
        backbone: Model family; empty = the preset's (awd_lstm).
        pretrain: Stage 1 settings; empty fields keep the preset's values.
        adapt: Stage 2 settings; empty fields keep the preset's values.
        classify: Stage 3 settings; empty fields keep the preset's values.
        overrides: Any other field as section.field=value, e.g. classify.bs=32 (applied last).
        rerun: Recompute this stage and the ones after it even if cached.
        out_dir: Run directory (default: runs/PRESET, relative to where the flow runs).
    """
    if backbone and backbone not in REGISTRY:
        raise ConfigError(f"backbone {backbone!r} is not available in this version; available: {', '.join(sorted(REGISTRY))}")
    cfg = load_config(preset, typed_overrides(backbone, pretrain, adapt, classify) + list(overrides or []))
    return run_stages(cfg, out_dir or f"runs/{preset}", rerun)


def run_stages(cfg: RunConfig, out_dir: str, rerun: Optional[str] = None, stage_dirs: Optional[dict] = None) -> dict:
    """Run the stages under the run directory's lock: a second run on the same folder fails fast.
    `stage_dirs` (stage -> folder) lets runs share stage folders (compare); `out_dir` is then what is locked."""
    run_dir = Path(out_dir).expanduser().resolve()
    with run_dir_lock(run_dir):
        return _run_locked(cfg, run_dir, rerun, stage_dirs)


def _run_locked(cfg: RunConfig, run_dir: Path, rerun: Optional[str], stage_dirs: Optional[dict]) -> dict:
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
        report_stage(stage, result["path"], state.name)
        upstream = result["path"]
    return summary
