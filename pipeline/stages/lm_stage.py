"""What the two language-model stages (pretrain, adapt) share: document sampling and the end of the
stage (model file, card, loss plot, written as one stage folder)."""
from __future__ import annotations

import numpy as np

from pipeline.artifacts.cards import card, loss_plot
from pipeline.artifacts.model_file import ModelFile, cpu_state
from pipeline.artifacts.stage_folder import write_stage
from pipeline.config import stage_config
from pipeline.stages.context import StageContext, StageResult
from pipeline.training.learner import EpochLog


def sample_rows(n_rows: int, n: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random sample of n rows (all rows if n is None), in original order."""
    if n is None or n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def write_lm_stage(ctx: StageContext, learn, backbone, encoder, arch: dict, metrics: dict, recorder: EpochLog,
                   samples: dict[str, str], title: str, summary: str, plot_title: str) -> StageResult:
    """Write the language model, its metrics, history, loss plot and card as the stage folder."""
    model = ModelFile(kind="lm", stage=ctx.stage, backbone=backbone.name, arch=arch,
                      config=stage_config(ctx.cfg, ctx.stage), state_dict=cpu_state(learn.model),
                      vocab=list(encoder.itos), tokenizer=encoder.state())
    history = recorder.history()
    write_stage(ctx.out_dir, model=model, metrics=metrics, history=history, cache_key=ctx.cache_key,
                extra_files={"history.png": loss_plot(recorder.batch_losses, history, plot_title)},
                card=card(title, summary, metrics, samples, history))
    return StageResult(ctx.stage, str(ctx.out_dir), metrics)
