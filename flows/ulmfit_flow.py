"""The ULMFiT flow: every stage of `pipeline.stages.registry` (pretrain -> adapt -> classify), in
order, through one generic Prefect task. With `model.direction = "both"`, a forward and a backward
chain of every stage and then their ensemble (`pipeline.use.ensemble`), as its own task.

Caching is the flow's own (`pipeline.artifacts.store`), not Prefect's: a stage whose folder in this run
directory already holds its key's output, or whose key the stage store holds (linked into this
folder), is not run again and its task run ends in the state `Cached`. Prefect only shows it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.launching import launch  # in process, or under torchrun when cfg.nproc > 1
from flows.params import (
    AdaptSettings,
    BackboneName,
    ClassifySettings,
    Preset,
    PretrainSettings,
    StageName,
    settings_values,
    typed_overrides,
)
from flows.reporting import report_stage, stage_progress
from pipeline.artifacts.layout import ENSEMBLE, chain_folders, chains
from pipeline.artifacts.locking import run_dir_lock
from pipeline.artifacts.stage_folder import partial_dir, read_metrics, remove_checkpoints
from pipeline.artifacts.store import computing, keep, restore, stage_key
from pipeline.config import RunConfig, load_config
from pipeline.stages.registry import REGISTRY, classifier_stage, depends_on
from pipeline.use.ensemble import ensure
from pipeline.validate import check_run


@task(name="stage", task_run_name="{stage}{suffix}", cache_policy=NO_CACHE, persist_result=False, retries=0,
      log_prints=True)
def stage_task(stage: str, cfg: RunConfig, out_dir: str, upstream: Optional[str], cache_key: str,
               force: bool = False, suffix: str = "") -> dict:
    """Run one stage into `out_dir`, unless that folder holds (or the stage store gives it) the
    stage's output for `cache_key`. Per-epoch checkpoints go to `<out_dir>.partial/` (resume after
    a crash); the UI gets a progress artifact. `suffix` names the chain (e.g. -backward) in the UI."""
    folder = Path(out_dir)
    with computing(cache_key, cfg):  # a run computing the same key elsewhere: wait for it, then take it
        if not force and restore(folder, cache_key, cfg):
            remove_checkpoints(partial_dir(folder))  # of an earlier, interrupted try (a user's file there stays)
            return Completed(name="Cached", data=_result(stage, folder), message=f"{stage}: {cache_key} from the cache")
        with stage_progress(stage, cfg, f"{stage}{suffix}"):
            result = launch(stage, cfg, upstream, out_dir, cache_key)
        keep(folder, cache_key, cfg)
    return {"stage": stage, "path": str(folder), "metrics": result.metrics}


def _result(stage: str, folder: Path) -> dict:
    return {"stage": stage, "path": str(folder), "metrics": read_metrics(folder)}


def run_stages(cfg: RunConfig, folders: dict[str, Path], rerun: Optional[str] = None, suffix: str = "") -> dict:
    """Every registered stage in order, each in its folder and reading its upstream's folder.
    `rerun` recomputes that stage and every stage that builds on it. `suffix` names the chain
    (the backward one: -backward) in task names, UI artifacts and the summary's keys."""
    summary = {}
    for name, stage in REGISTRY.items():
        folder = Path(folders[name])
        upstream = Path(folders[stage.upstream]) if stage.upstream else None
        key = stage_key(name, cfg, upstream)
        start = time.perf_counter()
        state = stage_task(name, cfg, str(folder), str(upstream) if upstream else None, key,
                           force=rerun is not None and depends_on(name, rerun), suffix=suffix, return_state=True)
        result = state.result()  # re-raises the stage's error
        summary[name + suffix] = {**result, "state": state.name, "seconds": time.perf_counter() - start}
        report_stage(name + suffix, result["path"], result["metrics"], state.name)
    return summary


@task(name="ensemble", cache_policy=NO_CACHE, persist_result=False, retries=0, log_prints=True)
def ensemble_task(folders: list[str], out_dir: str, cfg: RunConfig) -> dict:
    """Average the classifiers' test probabilities into `out_dir` (cached like a stage)."""
    state, metrics = ensure([Path(f) for f in folders], out_dir, cfg)
    result = {"stage": ENSEMBLE, "path": str(out_dir), "metrics": metrics}
    if state == "Cached":
        return Completed(name="Cached", data=result, message=f"{ENSEMBLE}: from the cache")
    return result


def run_directions(cfg: RunConfig, run_dir: Path, rerun: Optional[str] = None) -> dict:
    """The chain of stages for each direction `cfg` asks for (`pipeline.artifacts.layout.chains`), and for
    two directions their ensemble in `<run_dir>/ensemble/`."""
    summary, classifiers = {}, []
    for suffix, chain_cfg in chains(cfg):
        folders = chain_folders(run_dir, suffix)
        summary |= run_stages(chain_cfg, folders, rerun, suffix)
        classifiers.append(str(folders[classifier_stage()]))
    if len(classifiers) > 1:
        start = time.perf_counter()
        state = ensemble_task(classifiers, str(run_dir / ENSEMBLE), cfg, return_state=True)
        result = state.result()
        summary[ENSEMBLE] = {**result, "state": state.name, "seconds": time.perf_counter() - start}
        report_stage(ENSEMBLE, result["path"], result["metrics"], state.name)
    return summary


def run_in_folder(cfg: RunConfig, out_dir: str | Path, rerun: Optional[str] = None, check: bool = True) -> dict:
    """The stages in `<out_dir>/<stage>/` (and `<stage>-backward/`, `ensemble/` for both directions),
    under the run directory's lock (a second run on the same folder fails fast). With `check`, every input
    and output is checked first (`pipeline.validate`); `ulmfit run` checked them before Prefect started."""
    run_dir = Path(out_dir).expanduser().resolve()
    if check:
        check_run(cfg, run_dir, rerun=rerun)  # before any stage starts
    with run_dir_lock(run_dir):
        return run_directions(cfg, run_dir, rerun)


@flow(name="ulmfit", log_prints=True, persist_result=True)
def ulmfit_flow(preset: Preset = "cpu", backbone: Optional[BackboneName] = None,
                pretrain: PretrainSettings = PretrainSettings(), adapt: AdaptSettings = AdaptSettings(),
                classify: ClassifySettings = ClassifySettings(), overrides: Optional[list[str]] = None,
                rerun: Optional[StageName] = None, out_dir: Optional[str] = None) -> dict:
    """Pretrain a language model, adapt it to the target domain, fine-tune a classifier.

    Args:
        preset: Starting configuration (smoke: ~1 min test run; cpu: ~25 min on 2 cores; full: GPU reproduction).
        backbone: Model family (the form opens with the preset's).
        pretrain: Stage 1 settings (the form opens with the preset's values; from the API, a field left out keeps it).
        adapt: Stage 2 settings (the form opens with the preset's values; from the API, a field left out keeps it).
        classify: Stage 3 settings (the form opens with the preset's values; from the API, a field left out keeps it).
        overrides: Any other field as section.field=value, e.g. classify.bs=32 (applied last).
        rerun: Recompute this stage and the ones after it even if cached.
        out_dir: Run directory (default: runs/PRESET, relative to where the flow runs).
    """
    cfg = load_config(preset, typed_overrides(backbone, pretrain, adapt, classify) + list(overrides or []))
    return run_in_folder(cfg, out_dir or f"runs/{preset}", rerun)


def form_values(preset: str) -> dict:
    """What the `ulmfit/<preset>` deployment's form opens with (flows/forms.py): the preset's values."""
    cfg = load_config(preset)
    return {"backbone": cfg.model.backbone, **settings_values(cfg), "overrides": [], "out_dir": f"runs/{preset}"}


@flow(name="ulmfit", log_prints=True, persist_result=True)
def ulmfit_config_flow(config: RunConfig, out_dir: str, rerun: Optional[StageName] = None) -> dict:
    """The same flow for a config that is already resolved and whose run is already checked (what `ulmfit run`
    passes, after `pipeline.validate.check_run`): nothing is checked twice."""
    return run_in_folder(config, out_dir, rerun, check=False)
