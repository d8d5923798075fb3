"""What a stage is given and what it hands back: `run(ctx: StageContext) -> StageResult`.

Whoever launches a stage builds its context with `make_context`: the flow's task for a stage
run in its own process, and every torchrun worker (`pipeline.stages.run_one`) for a data-parallel one.
Nothing reaches a stage through hidden state: the config object, the folders, the cache key,
the checkpointer and the process rank are all here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.training import ranks

if TYPE_CHECKING:  # fastai is slow to import: only the stage's own process needs it
    from pipeline.training.checkpoint import Checkpointer


@dataclass(frozen=True)
class StageContext:
    stage: str  # registry name of the stage being run
    cfg: RunConfig  # the validated config of the whole run
    out_dir: Path  # the folder this stage writes (absolute)
    upstream_dir: Path | None = None  # the folder of the stage it builds on (None for the first stage)
    cache_key: str = ""  # written into manifest.json; keys the checkpoints
    checkpointer: "Checkpointer | None" = None  # per-epoch checkpoints in <out_dir>.partial (None: none)
    rank: int = 0  # this process's rank in the data-parallel group (0 outside one)

    def upstream(self) -> Path:
        if self.upstream_dir is None:
            raise ConfigError(f"stage {self.stage} needs the folder of the stage it builds on (upstream)")
        return self.upstream_dir


@dataclass(frozen=True)
class StageResult:
    """What a stage hands downstream: where its artifact folder is and its metrics."""

    stage: str
    path: str
    metrics: dict


def make_context(stage: str, cfg: RunConfig, out_dir: str | Path, upstream_dir: str | Path | None = None,
                 cache_key: str = "", resumable: bool = False) -> StageContext:
    """The context for running `stage` in this process; with `resumable`, every finished epoch is
    checkpointed (by rank 0) beside the output folder and a rerun resumes from there."""
    out = Path(out_dir).expanduser().resolve()
    checkpointer = None
    if resumable:
        from pipeline.artifacts.stage_folder import partial_dir
        from pipeline.training.checkpoint import Checkpointer

        checkpointer = Checkpointer(partial_dir(out), cache_key)
    upstream = Path(upstream_dir).expanduser().resolve() if upstream_dir else None
    return StageContext(stage, cfg, out, upstream, cache_key, checkpointer, ranks.rank())
