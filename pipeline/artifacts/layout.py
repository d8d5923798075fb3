"""Where a run's stages live: the one module that knows a run directory's layout.

    <run>/<stage>              one folder per registered stage, named after it       stage_folders
    <run>/<stage>-backward     the backward chain when model.direction = "both"      chains, chain_folders
    <run>/ensemble/            the forward + backward ensemble (pipeline.use.ensemble)   run_folders
    <run>/<stage>.partial/     a stage's epoch checkpoints while it trains           artifacts.partial_dir

The flow, the validation, the ensemble, `predict`, `export` and `inspect` ask here; stage names come from
the stage registry, so a stage registered in the middle of the chain gets its folder like the others.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts.stage_folder import MANIFEST, is_complete, verify_folder
from pipeline.config import RunConfig
from pipeline.errors import ArtifactError
from pipeline.stages.registry import REGISTRY, classifier_stage

ENSEMBLE = "ensemble"  # its folder in a run directory, and its name in the run summary
BACKWARD_SUFFIX = "-backward"  # the backward chain's stage folders: <run>/<stage>-backward


def stage_folders(run_dir: str | Path) -> dict[str, Path]:
    """stage name -> its folder in a run directory (a folder per stage, named after it)."""
    run = Path(run_dir).expanduser().resolve()
    return {name: run / name for name in REGISTRY}


def chains(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(stage folder suffix, config) of each chain of stages `cfg` asks for: itself for one direction;
    for both, a forward chain (suffix "") and a backward one, each config with its own direction."""
    if cfg.model.direction != "both":
        return [("", cfg)]
    return [("", _with_direction(cfg, "forward")), (BACKWARD_SUFFIX, _with_direction(cfg, "backward"))]


def _with_direction(cfg: RunConfig, direction: str) -> RunConfig:
    tree = cfg.model_dump()
    tree["model"]["direction"] = direction
    return RunConfig.model_validate(tree)


def chain_folders(run_dir: str | Path, suffix: str) -> dict[str, Path]:
    """stage name -> its folder in a run directory, for the chain with this suffix."""
    return {name: folder.with_name(folder.name + suffix) for name, folder in stage_folders(run_dir).items()}


def run_folders(cfg: RunConfig, run_dir: str | Path) -> list[Path]:
    """Every folder a run of `cfg` writes in `run_dir`: each chain's stage folders, and the ensemble's."""
    folders = [f for suffix, _ in chains(cfg) for f in chain_folders(run_dir, suffix).values()]
    return folders + ([Path(run_dir).expanduser().resolve() / ENSEMBLE] if len(chains(cfg)) > 1 else [])


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """The complete folder of `stage` in a run directory (what the notebooks read)."""
    if stage not in REGISTRY:
        raise ArtifactError(f"unknown stage {stage!r}; stages: {', '.join(REGISTRY)}")
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ArtifactError(f"{run}: no such run directory (set ULMFIT_RUN_DIR or RUN_DIR)")
    folder = run / stage
    if not is_complete(folder):
        raise ArtifactError(f"{folder}: not a complete stage folder; run `ulmfit run --out {run}` first")
    return folder


def classifier_folder(path: str | Path) -> Path:
    """A trained classifier's folder, verified against its manifest (a damaged file is named in one line):
    `path` itself when it is a stage folder (e.g. RUN/classify-backward), else the classifier stage's folder
    of the run directory `path`. What `predict`, `export` and `ulmfit ensemble` read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path}: no such run directory")
    stage = classifier_stage()
    is_stage = (path / MANIFEST).exists() or (path.name == stage and not (path / stage).is_dir())
    folder = path if is_stage else path / stage
    if not (folder / MANIFEST).exists():
        raise ArtifactError(f"{path}: no complete {stage} stage here (expected {folder / MANIFEST}); "
                            "run `ulmfit run` first")
    verify_folder(folder)
    return folder.resolve()
