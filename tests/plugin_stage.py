"""Export: the classifier's weights re-saved in a stage folder of their own (a test stage)."""
from __future__ import annotations

import pandas as pd

from pipeline.artifacts.cards import card
from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.stage_folder import write_stage
from pipeline.stages.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    model = load_model_file(ctx.upstream(), expect_kind="classifier")
    metrics = {"n_weights": sum(v.numel() for v in model.state_dict.values()), "n_classes": len(model.classes)}
    write_stage(ctx.out_dir, model=model, metrics=metrics, history=pd.DataFrame(), cache_key=ctx.cache_key,
                card=card("Export", f"The classifier of {ctx.upstream()}.", metrics))
    return StageResult(ctx.stage, str(ctx.out_dir), metrics)
