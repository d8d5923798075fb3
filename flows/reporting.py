"""What the Prefect UI shows about each stage: artifacts and live epoch progress.

- After each stage, and after the ensemble of a forward + backward run (computed or cached): a
  table artifact of its metrics and a markdown artifact of its card (`card.md`, with the
  loss-curve PNG's path on disk). A backward chain's artifacts are keyed `<stage>-backward-...`.
- While a stage trains: a progress artifact that moves one step per finished epoch. The
  pipeline logs one line per epoch to the "ulmfit" logger (pipeline.training.learner.EpochLog);
  Prefect ships those lines to the run's logs (PREFECT_LOGGING_EXTRA_LOGGERS, see
  flows/__init__.py), and a handler here turns them into progress.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Iterator

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from pipeline.config import RunConfig
from pipeline.stages.registry import get_stage

log = logging.getLogger("ulmfit")
EPOCH_LINE = re.compile(r"^(\S+) epoch (\d+)/(\d+): ")  # EpochLog's end-of-epoch line (heartbeats are indented)


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(stage: str, what: str) -> str:
    """`<stage>-<what>`: Prefect's artifact keys take lowercase letters, digits and dashes only, and a stage
    name may hold an underscore (it also names a config section, a Python attribute)."""
    return re.sub(r"[^a-z0-9-]", "-", f"{stage}-{what}".lower())


def metric_rows(metrics: dict) -> list[dict]:
    """Scalar metrics as table rows (the confusion matrix and class list are in the card)."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            rows.append({"metric": key, "value": round(value, 6) if isinstance(value, float) else value})
    return rows


def card_markdown(stage_dir: Path) -> str:
    """The stage's card, with the relative loss-curve link replaced by its path on disk."""
    card = (stage_dir / "card.md").read_text()
    png = stage_dir / "history.png"
    return card.replace("![loss curves](history.png)", f"Loss curves (PNG in the run folder): `{png}`")


def report_stage(stage: str, path: str, metrics: dict, state: str) -> None:
    """Table + markdown artifacts for a finished stage (its metrics as the task returned them); a no-op
    outside a Prefect run."""
    if not _in_run():
        return
    folder = Path(path)
    label = "from cache" if state == "Cached" else "computed"
    create_table_artifact(table=metric_rows(metrics), key=artifact_key(stage, "metrics"),
                          description=f"{stage} metrics ({label}); {folder}")
    create_markdown_artifact(markdown=card_markdown(folder), key=artifact_key(stage, "card"),
                             description=f"{stage} card ({label}); {folder}")


class EpochProgress(logging.Handler):
    """Counts EpochLog's end-of-epoch lines and moves a Prefect progress artifact."""

    def __init__(self, artifact_id, total: int):
        super().__init__(logging.INFO)
        self.artifact_id, self.total, self.done = artifact_id, max(total, 1), 0

    def emit(self, record: logging.LogRecord) -> None:
        if not EPOCH_LINE.match(record.getMessage()):
            return
        self.done += 1
        self.update(min(100.0, 100.0 * self.done / self.total))

    def update(self, progress: float) -> None:
        try:
            update_progress_artifact(artifact_id=self.artifact_id, progress=progress)
        except Exception as err:  # progress display must never break training
            log.debug("progress artifact update failed: %s", err)


@contextlib.contextmanager
def stage_progress(stage: str, cfg: RunConfig, label: str | None = None) -> Iterator[None]:
    """Within a task run: a progress artifact for this stage (named `label`: the stage and its chain's
    suffix), updated once per epoch."""
    if not _in_run():
        yield
        return
    total = get_stage(stage).epochs(cfg)
    label = label or stage
    artifact_id = create_progress_artifact(progress=0.0, key=artifact_key(label, "progress"),
                                           description=f"{label}: epochs finished / {total}")
    handler = EpochProgress(artifact_id, total)
    logger = logging.getLogger("ulmfit")
    logger.addHandler(handler)
    try:
        yield
        handler.update(100.0)
    finally:
        logger.removeHandler(handler)
